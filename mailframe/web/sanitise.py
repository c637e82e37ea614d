"""
L{sanitise}: a message's HTML body made safe to show in the console's
sandboxed frame.  The HTML is parsed (C{html.parser}) and written out
again from what was parsed, so that no markup of the message reaches the
browser unparsed: every text is escaped, every attribute quoted and
escaped, and only well-formed tag names are kept.

Dropped: the elements that run or load things (C{script}, C{iframe},
C{frame}, C{frameset}, C{object}, C{embed}, C{applet}, C{base}, C{link},
C{form}'s own tag, C{meta http-equiv}) with the content of those that have
one, comments and declarations; every C{on*} attribute; every attribute
whose value is a C{javascript:} or C{vbscript:} URL (after entities,
whitespace and control characters are taken out, as browsers do); C{data:}
URLs but C{data:image/*} (not SVG) in URL attributes; and, unless remote
images are allowed, C{img} elements with a remote source, C{srcset}, and
remote C{background}s.  C{style} elements and attributes are kept: the
frame's Content-Security-Policy stops what CSS could load.

This is the first line; the second is the answer's CSP (C{sandbox}, no
scripts, images from C{data:} and C{cid:} only), which the API sets.

Owns: the sanitising.  Must not: import twisted (it is a pure function).
"""

from __future__ import annotations

import re
from html import escape
from html.parser import HTMLParser

__all__ = ["sanitise"]

_DROP_WITH_CONTENT = frozenset(
    {"script", "iframe", "frameset", "object", "applet", "noembed", "noframes", "template"}
)  # fmt: skip
_DROP_TAG = frozenset(
    {"base", "link", "form", "param", "source", "track", "portal", "embed", "frame"}
)
_VOID = frozenset({"area", "br", "col", "hr", "img", "input", "meta", "wbr", "basefont", "keygen"})
_URL_ATTRIBUTES = frozenset(
    {"href", "src", "action", "formaction", "xlink:href", "background", "poster", "lowsrc",
     "dynsrc", "data", "codebase", "cite", "longdesc", "usemap", "ping", "manifest", "srcset",
     "imagesrcset", "profile", "classid", "archive"}
)  # fmt: skip
_TAG_NAME = re.compile(r"[a-z][a-z0-9-]*(?::[a-z][a-z0-9-]*)?\Z")
_ATTRIBUTE_NAME = re.compile(r"[a-z_:][a-z0-9_.:-]*\Z")
_INVISIBLE = re.compile(r"[\x00-\x20\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]+")
_SCRIPT_SCHEMES = ("javascript:", "vbscript:", "livescript:", "mocha:")


def _scheme(value: str) -> str:
    """A URL as a browser reads its scheme: lower case, whitespace and controls gone."""
    return _INVISIBLE.sub("", value).lower()


def _remote(value: str) -> bool:
    url = _scheme(value)
    return url.startswith(("http:", "https:", "//", "\\\\", "/\\", "\\/", "ftp:"))


def _safeData(url: str) -> bool:
    return url.startswith("data:image/") and not url.startswith("data:image/svg")


class _Sanitiser(HTMLParser):
    def __init__(self, remote: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.remote = remote
        self.out: list[str] = []
        self.skipping: list[str] = []  # the open elements whose content is dropped
        self.inStyle = False

    # -- elements ---------------------------------------------------------------

    def _attributes(self, tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
        """The attributes written out, or None to drop the element."""
        kept: list[str] = []
        for name, value in attrs:
            name = name.lower()
            if not _ATTRIBUTE_NAME.match(name) or name.startswith("on"):
                continue
            if name in ("srcdoc", "xmlns:xlink") or name.startswith("xml:"):
                continue
            if value is None:
                kept.append(f" {name}")
                continue
            url = _scheme(value)
            if url.startswith(_SCRIPT_SCHEMES) or "javascript:" in url or "vbscript:" in url:
                continue
            if name in _URL_ATTRIBUTES or name.endswith(":href"):
                if url.startswith("data:") and not _safeData(url):
                    continue
                if not self.remote and name in ("srcset", "imagesrcset"):
                    continue
                if not self.remote and name in ("src", "background", "lowsrc", "dynsrc",
                                                "poster") and _remote(value):  # fmt: skip
                    if tag == "img":
                        return None
                    continue
            if name == "http-equiv":
                return None  # meta refresh, set-cookie, CSP of the message's own ...
            kept.append(f' {name}="{escape(value, quote=True)}"')
        return "".join(kept)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._start(tag, attrs, True)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], closed: bool) -> None:
        tag = tag.lower()
        if self.skipping:
            if tag in _DROP_WITH_CONTENT and not closed:
                self.skipping.append(tag)
            return
        if tag in _DROP_WITH_CONTENT:
            if not closed:
                self.skipping.append(tag)
            return
        if tag in _DROP_TAG or not _TAG_NAME.match(tag):
            return
        written = self._attributes(tag, attrs)
        if written is None:
            return
        if tag == "style" and not closed:
            self.inStyle = True
        self.out.append(f"<{tag}{written}{' /' if closed else ''}>")

    def handle_endtag(self, tag: str) -> None:
        tag = tag.lower()
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
            return
        if tag == "style":
            self.inStyle = False
        if tag in _DROP_WITH_CONTENT or tag in _DROP_TAG or tag in _VOID:
            return
        if _TAG_NAME.match(tag):
            self.out.append(f"</{tag}>")

    # -- the rest ----------------------------------------------------------------

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.inStyle:  # raw text: it must not end the element or open another
            self.out.append(data.replace("<", "\\3c "))
        else:
            self.out.append(escape(data, quote=False))

    def handle_comment(self, data: str) -> None:
        pass

    def handle_decl(self, decl: str) -> None:
        pass

    def handle_pi(self, data: str) -> None:
        pass

    def unknown_decl(self, data: str) -> None:
        pass


def sanitise(html: str, remote: bool = False) -> str:
    """
    C{html} safe to show in a sandboxed frame (see the module's
    docstring); C{remote}: keep images with an http(s) source.
    """
    parser = _Sanitiser(remote)
    parser.feed(html)
    parser.close()
    if parser.inStyle:
        parser.out.append("</style>")
    return "".join(parser.out)
