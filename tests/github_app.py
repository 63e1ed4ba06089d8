"""previewbot as a GitHub App in the end-to-end tests: the App, its installation and repository
as the fake GitHub knows them (the fixtures `private_key_pem`, `fake` and `start_bot` in
conftest.py use these)."""

APP_ID = 4242
INSTALLATION = 77
SECRET = "webhook-secret-for-tests"
REPO = "octo/app"
SHA1, SHA2, SHA3 = "1" * 40, "2" * 40, "3" * 40
