"""A model of what GitHub makes of the Markdown the bot writes, to ask which links, mentions,
issue references and tags a reader would get.

CommonMark with raw HTML and tables (markdown-it, as GitHub's cmark-gfm), plus GitHub's own
passes: cmark-gfm's autolinks (`https://…`, `www.…`, e-mail addresses), which look at Markdown
text wherever it is, raw `<code>` tags or not, but never across a backslash escape; and the
mention and reference filters, which read the HTML's text outside `<code>`, `<pre>` and `<a>`.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import markdown_it

MENTION = re.compile(r"(?<![\w`])@[A-Za-z0-9]")
REFERENCE = re.compile(r"#\d")
AUTOLINK = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|\bwww\.|[\w.+-]@[\w-]+\.\w")
# Raw HTML tags the bot may write; any other (`<img>`, `<script>`…) came from untrusted text.
INLINE_TAGS = {"code", "a", "sub"}
BLOCK_TAGS = {"pre", "code", "sub"}
# previewbot's own log pages (`bot.links.log_page_url`): the operator's address and a deployment
# id previewbot made, never text from a pull request.
OWN_PAGE = re.compile(r"https?://[^/\s]+/deployments/[0-9a-f]{32}/logs")
# Where GitHub's mention and reference filters do not look.
QUIET = {"code", "pre", "a"}


def problems(markdown: str, *, links: tuple[str, ...] = ()) -> list[str]:
    """What in `markdown` would not be inert on GitHub: links other than `links`, tags the bot
    does not write, mentions, issue references. Empty when all is inert."""
    md = _markdown()
    md.core.ruler.disable("text_join")  # keep escaped characters apart, as cmark-gfm's autolinker sees them
    found: list[str] = []
    for token in md.parse(markdown):
        if token.type == "html_block":
            found += _html_problems(token.content, BLOCK_TAGS, links)
        elif token.type == "inline":
            found += _inline_problems(token.children or [], links)
    return found


def rendered(markdown: str) -> str:
    """The HTML of `markdown`, before GitHub's own passes."""
    return _markdown().render(markdown)


def shown(markdown: str) -> str:
    """The characters a reader sees: rendered, tags dropped, entities decoded, joiners gone."""
    return html.unescape(re.sub(r"<[^>]+>", "", rendered(markdown))).replace("\u200d", "")


def _markdown():
    return markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")


def _inline_problems(children, links: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    raw_html = _Html(INLINE_TAGS, links)
    run: list[str] = []  # text as the filters read it, escapes resolved

    def end_run() -> None:
        found.extend(_filter_problems("".join(run)))
        run.clear()

    for child in children:
        if child.type in ("text", "text_special"):
            if child.type == "text" and AUTOLINK.search(child.content):
                found.append(f"autolink: {child.content!r}")
            if not raw_html.quiet:
                run.append(child.content)
        else:
            end_run()
            if child.type == "html_inline":
                raw_html.feed(child.content)
            elif child.type == "link_open" and child.attrs.get("href") not in links and not OWN_PAGE.fullmatch(child.attrs.get("href") or ""):
                found.append(f"link: {child.attrs.get('href')!r}")
            elif child.type == "image":
                found.append(f"image: {child.attrs.get('src')!r}")
    end_run()
    return found + raw_html.found


def _html_problems(content: str, tags: set[str], links: tuple[str, ...]) -> list[str]:
    raw_html = _Html(tags, links)
    raw_html.feed(content)
    raw_html.close()
    return raw_html.found


def _filter_problems(text: str) -> list[str]:
    return [f"{kind}: {text!r}" for kind, pattern in (("mention", MENTION), ("reference", REFERENCE)) if pattern.search(text)]


class _Html(HTMLParser):
    """Raw HTML as GitHub's filters see it: tags, links, and text outside code, pre and links."""

    def __init__(self, tags: set[str], links: tuple[str, ...]):
        super().__init__(convert_charrefs=True)
        self.tags, self.links = tags, links
        self.open: list[str] = []
        self.found: list[str] = []

    @property
    def quiet(self) -> bool:
        return any(tag in QUIET for tag in self.open)

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag not in self.tags:
            self.found.append(f"tag: <{tag}>")
        if tag == "a" and dict(attrs).get("href") not in self.links:
            self.found.append(f"link: {dict(attrs).get('href')!r}")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        if not self.quiet:
            self.found.extend(_filter_problems(data))
