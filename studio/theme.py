"""The studio's look: one gradio theme and a little CSS (passed to `launch`, as gradio 6 wants).

Fonts are the ones gradio ships locally, so the page renders the same without internet.
"""

from __future__ import annotations

import gradio as gr


def make_theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="teal", secondary_hue="teal", neutral_hue="slate",
                          radius_size="md", text_size="md")


CSS = """
.gradio-container { max-width: 1280px !important; margin: 0 auto !important; }
#studio-header { padding: 6px 4px 2px 4px; }
#studio-header h1 { font-size: 1.6rem; margin: 0 0 2px 0; }
#studio-header p { margin: 2px 0; color: var(--body-text-color-subdued); }
#studio-header .licence { font-size: 0.85rem; }
.section-title h3 { margin: 10px 0 0 0; }
.section-hint { color: var(--body-text-color-subdued); font-size: 0.9rem; }

/* Summary: a row of stat cards, then the rejection reasons as a compact list. */
.stat-cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(120px, 1fr)); gap: 10px; }
.stat-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 12px;
             background: var(--background-fill-secondary); }
.stat-card .value { font-size: 1.45rem; font-weight: 700; line-height: 1.2; }
.stat-card .label { font-size: 0.8rem; color: var(--body-text-color-subdued); text-transform: uppercase;
                    letter-spacing: 0.03em; }
.stat-card.ok .value { color: #2a9d8f; }
.stat-card.bad .value { color: #e76f51; }
.summary-meta { margin-top: 10px; font-size: 0.9rem; color: var(--body-text-color-subdued);
                overflow-wrap: anywhere; }
.reason-list { margin: 6px 0 0 0; padding-left: 18px; font-size: 0.9rem; }
.reason-list li { margin: 1px 0; }
.empty-note { color: var(--body-text-color-subdued); font-style: italic; }

/* Messages (errors from the pipeline, confirmations). */
.note { border-radius: 8px; padding: 8px 12px; margin-top: 6px; font-size: 0.95rem; overflow-wrap: anywhere; }
.note.error { background: #fdecea; color: #8a1c0c; border: 1px solid #f5c2b8; }
.note.ok { background: #e7f5f2; color: #155e55; border: 1px solid #b6e0d8; }
.note.info { background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary); }

/* Speaker card in the gallery. */
.speaker-card table { width: 100%; border-collapse: collapse; font-size: 0.92rem; border: none !important;
                      margin: 0 !important; }
.speaker-card tr { border: none !important; background: transparent !important; }
.speaker-card td { padding: 4px 8px !important; border: none !important;
                   border-bottom: 1px solid var(--border-color-primary) !important; }
.speaker-card tr:last-child td { border-bottom: none !important; }
.speaker-card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 4px 8px;
                background: var(--background-fill-secondary); }
.speaker-card td:last-child { text-align: right; font-variant-numeric: tabular-nums; }
.clip-caption { font-size: 0.88rem; color: var(--body-text-color-subdued); min-height: 2.4em; }
"""
