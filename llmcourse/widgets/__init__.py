"""Interactive explorers for the book's pages (ipywidgets), one module per topic.

An explorer is an ordinary `ipywidgets` box: display it in Jupyter and play with it. Its pictures
are drawn by plain matplotlib functions (the same ones the pages call for their static figures,
since the website has no kernel) and shown as PNG images, so an explorer also works,
and can be tested, without a running notebook: set a control's `.value` and read the new state.

Each module holds one chapter's explorer and the drawing functions only it needs (shared ones are
in `llmcourse.plots`), so the page's static figure and the explorer draw the same thing: `next_char` (chapter 01), `tokens` (02), ...
"""
