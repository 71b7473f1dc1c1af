"""`bot compare`: read run directories, join each pretrain run with the fine-tune runs of its weights, and show
the paper's Tables 8 and 9 for any set of checkpoints (terminal, Markdown, CSV, JSON, PNG).

Reads files only: no stage's training code is imported here.
"""
