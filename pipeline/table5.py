"""The analogue of the paper's Table 5 (Zhou et al. 2024, ABAW6): which features and which temporal
head each ablation row uses, and the paper's own figures on Aff-Wild2's validation set for the
side-by-side.

The demo trains every row and the report prints them beside the paper's; both read this one table.
"""

# (row, features, head model): "finetuned" features come from the Expr fine-tuned encoder,
# "pretrained" ones from the MAE encoder alone.
ABLATIONS = (
    ("full model", "finetuned", "temporal_tcn_transformer"),
    ("without Expr fine-tuning", "pretrained", "temporal_tcn_transformer"),
    ("without TCN", "finetuned", "temporal_transformer"),
    ("without Transformer", "finetuned", "temporal_tcn"),
    ("frame-wise linear", "finetuned", "temporal_linear"),
)

# Paper Table 5 (Aff-Wild2 validation): VA mean CCC, Expr macro F1, AU mean F1.
PAPER_TABLE5 = {
    "full model": {"va": 0.5805, "expr": 0.4561, "au": 0.5762},
    "without Expr fine-tuning": {"va": 0.5038, "expr": 0.4014, "au": 0.5194},
    "without TCN": {"va": 0.5675, "expr": 0.4372, "au": 0.5519},
    "without Transformer": {"va": 0.5734, "expr": 0.4428, "au": 0.5612},
}


def slug(row: str) -> str:
    """A row's directory name: ``full model`` -> ``full-model``."""
    return row.replace(" ", "-").replace("/", "-").lower()
