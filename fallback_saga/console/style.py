"""The console's look: its one style sheet and its logo.

No script at all, and this one inline style sheet, allowed by its hash in
the Content-Security-Policy (``STYLE_HASH``, sent by ``responses``).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

__all__ = ["CSS", "FAVICON", "LOGO", "STYLE_HASH"]

CSS: Final = """
:root{--bg:#f5f6f8;--card:#fff;--line:#e4e7ec;--text:#101828;--muted:#667085;
--accent:#4f46e5;--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);
font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.topbar{display:flex;align-items:center;gap:28px;padding:0 28px;height:54px;background:#101828;
color:#e4e7ec}
.brand{display:flex;align-items:center;gap:9px;color:#fff;font-weight:650;font-size:15px}
.brand:hover{text-decoration:none}.brand svg{display:block}
.brand .sub{color:#98a2b3;font-weight:500}
.topbar nav{display:flex;gap:4px}
.topbar nav a{color:#d0d5dd;padding:6px 12px;border-radius:6px}
.topbar nav a:hover{background:#1d2939;text-decoration:none}
.topbar nav a.on{background:#344054;color:#fff}
.topbar .store{margin-left:auto;color:#98a2b3;font-size:13px;font-family:var(--mono)}
.pill{display:inline-block;border:1px solid #475467;border-radius:999px;padding:1px 9px;
font-size:11px;color:#d0d5dd;text-transform:uppercase;letter-spacing:.04em}
main{max-width:1280px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:22px;margin:0;font-weight:650;letter-spacing:-.01em}
h2{font-size:13px;margin:0 0 12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);
font-weight:600}
.head{display:flex;align-items:flex-end;justify-content:space-between;gap:16px;margin-bottom:18px}
.actions{display:flex;gap:10px;align-items:center}
.goto{display:flex;gap:6px}.goto input{font:inherit;padding:6px 10px;border:1px solid #d0d5dd;
border-radius:7px;width:240px;font-family:var(--mono);font-size:13px}
.goto input:focus{outline:2px solid #c7d2fe;border-color:var(--accent)}
.head .sub{color:var(--muted);margin-top:4px;display:flex;gap:10px;align-items:center}
.crumbs{color:var(--muted);margin-bottom:10px;font-size:13px}
.mono{font-family:var(--mono)}
.button{display:inline-block;border:1px solid var(--line);background:#fff;color:var(--text);
border-radius:7px;padding:6px 13px;font:inherit;font-weight:550;cursor:pointer}
.button:hover{background:#f9fafb;text-decoration:none}
.button.primary{background:var(--accent);border-color:var(--accent);color:#fff}
.button.primary:hover{background:#4338ca}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;
margin-bottom:18px;box-shadow:0 1px 2px rgba(16,24,40,.04)}
.counts{display:grid;grid-template-columns:repeat(7,minmax(0,1fr));gap:12px;margin-bottom:18px}
.count{background:#fff;border:1px solid var(--line);border-radius:10px;padding:12px 14px;
color:var(--text);border-top:3px solid #d0d5dd}
.count:hover{text-decoration:none;border-color:#c7cbd3}
.count .n{display:block;font-size:24px;font-weight:650;font-variant-numeric:tabular-nums}
.count .what{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.05em}
.count.on{outline:2px solid var(--accent);outline-offset:-1px}
.count.running{border-top-color:#2e6be6}.count.compensating{border-top-color:#f79009}
.count.completed{border-top-color:#12b76a}.count.compensated{border-top-color:#7a5af8}
.count.failed{border-top-color:#f04438}.count.all{border-top-color:#101828}
.filters{display:flex;flex-wrap:wrap;align-items:flex-end;gap:12px}
.filters label{display:flex;flex-direction:column;gap:4px;font-size:12px;color:var(--muted);
font-weight:550}
.filters input,.filters select{font:inherit;font-size:14px;color:var(--text);padding:6px 9px;
border:1px solid #d0d5dd;border-radius:7px;background:#fff;min-width:120px}
.filters input[name=name]{min-width:190px}
.filters input:focus,.filters select:focus{outline:2px solid #c7d2fe;border-color:var(--accent)}
.quick{display:flex;gap:6px;align-items:center;color:var(--muted);font-size:12px;width:100%}
.quick a{border:1px solid var(--line);border-radius:999px;padding:1px 10px;background:#fff}
.quick a.on{background:#eef2ff;border-color:#c7d2fe}
table{width:100%;border-collapse:collapse}
th{text-align:left;font-size:12px;color:var(--muted);font-weight:600;padding:9px 12px;
border-bottom:1px solid var(--line);background:#f9fafb;white-space:nowrap}
td{padding:9px 12px;border-bottom:1px solid #f0f1f4;vertical-align:top}
tbody tr:hover{background:#f9fafb}
.table{padding:0;overflow-x:auto}.table table{min-width:760px}
.table th:first-child,.table td:first-child{padding-left:20px}
.table h2{padding:16px 20px 4px;margin:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td .when{white-space:nowrap}.muted{color:var(--muted)}.small{font-size:12px}
.id{font-family:var(--mono);font-size:13px;word-break:break-all}
h1.id{font-size:20px;font-weight:600}
td.nowrap{white-space:nowrap}
.badge{display:inline-flex;align-items:center;gap:6px;border-radius:999px;padding:2px 10px;
font-size:12px;font-weight:600;white-space:nowrap;background:#f2f4f7;color:#344054}
.badge::before{content:"";width:7px;height:7px;border-radius:50%;background:currentColor}
.badge.running{background:#e6eefd;color:#1d5bd8}.badge.compensating{background:#fef0c7;color:#a15c07}
.badge.completed{background:#dcfae6;color:#067647}.badge.compensated{background:#ebe9fe;color:#5925dc}
.badge.failed{background:#fee4e2;color:#b42318}.badge.pending{background:#f2f4f7;color:#475467}
.badge.started{background:#e6eefd;color:#1d5bd8}
.pager{display:flex;justify-content:space-between;align-items:center;padding:12px 20px}
.notes{background:#fffaeb;border:1px solid #fedf89;color:#93370d;border-radius:8px;
padding:10px 14px;margin-bottom:16px}
.notes p{margin:2px 0}
.alert{border-radius:10px;padding:14px 18px;margin-bottom:18px;border:1px solid}
.alert.failed{background:#fef3f2;border-color:#fecdca;color:#912018}
.alert.compensated{background:#f4f3ff;border-color:#d9d6fe;color:#4a1fb8}
.alert strong{display:block;margin-bottom:4px}.alert pre+strong{margin-top:12px}
.alert pre{margin:6px 0 0;white-space:pre-wrap;word-break:break-word;font-size:12.5px}
.grid{display:grid;grid-template-columns:2fr 1fr;gap:18px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:8px 18px;margin:0}
dt{color:var(--muted)}dd{margin:0;min-width:0;word-break:break-word}
.timeline{display:block;max-width:100%;height:auto}
.timeline text{font:12px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#344054}
.timeline .axis{fill:#98a2b3;font-size:11px}
.timeline .grid{stroke:#eaecf0;stroke-width:1}
.timeline .axis-line{stroke:#d0d5dd}.timeline .stripe{fill:#fafbfc}
.timeline .label.undo{fill:#93370d}.timeline .tag{fill:#98a2b3;font-size:11px}
.timeline .duration{fill:#667085;font-size:11px}.timeline .mark{fill:#d92d20;font-weight:700}
.timeline .row:hover .stripe,.timeline .row:hover rect.bar{opacity:.85}
.bar.act.completed{fill:#12b76a}.bar.compensate.completed{fill:#f79009}
.bar.failed{fill:#f04438}.bar.interrupted{fill:#d0d5dd;stroke:#98a2b3;stroke-dasharray:3 2}
.bar.running{fill:#2e6be6}
.legend{display:flex;flex-wrap:wrap;gap:16px;margin-top:10px;color:var(--muted);font-size:12px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.legend .swatch{display:inline-block;width:14px;height:10px;border-radius:3px}
.swatch.act{background:#12b76a}.swatch.compensate{background:#f79009}
.swatch.failed{background:#f04438}.swatch.interrupted{background:#d0d5dd}
.swatch.running{background:#2e6be6}
pre{font-family:var(--mono);font-size:12.5px;margin:0}
pre.json{background:#0c111d;color:#e4e7ec;border-radius:8px;padding:14px 16px;overflow:auto;
max-height:520px;line-height:1.55}
td pre{white-space:pre-wrap;word-break:break-word}
td.error{color:#b42318;max-width:460px}td.result{max-width:320px}
details summary{cursor:pointer;color:var(--muted)}
.empty{padding:40px 20px;text-align:center;color:var(--muted)}
.problem{max-width:720px;margin:60px auto;text-align:center}
.problem .code{font-size:56px;font-weight:700;color:#d0d5dd;letter-spacing:-.02em}
.problem p{color:var(--muted)}
footer{max-width:1280px;margin:0 auto;padding:0 28px 28px;color:#98a2b3;font-size:12px}
@media (max-width:900px){.counts{grid-template-columns:repeat(4,minmax(0,1fr))}
.grid{grid-template-columns:1fr}.topbar .store{display:none}}
"""

#: The Content-Security-Policy source of the one style sheet.
STYLE_HASH: Final = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()

LOGO: Final = (
    '<svg width="22" height="22" viewBox="0 0 24 24" aria-hidden="true">'
    '<rect x="1" y="1" width="22" height="22" rx="6" fill="#4f46e5"/>'
    '<path d="M6 8h8M6 12h12M6 16h6" stroke="#fff" stroke-width="2.2" stroke-linecap="round"/>'
    '<circle cx="17" cy="8" r="1.6" fill="#a5b4fc"/><circle cx="15" cy="16" r="1.6" '
    'fill="#fda29b"/></svg>'
)

FAVICON: Final = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24">'
    '<rect x="1" y="1" width="22" height="22" rx="6" fill="#4f46e5"/>'
    '<path d="M6 8h8M6 12h12M6 16h6" stroke="#fff" stroke-width="2.2" stroke-linecap="round"/>'
    "</svg>"
)
