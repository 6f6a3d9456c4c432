"""Follow-up comparison: register a follow-up CT to its baseline, match lesions, RECIST 1.1 and volumetry.

A size measurement of tumour masks, not a diagnosis (docs/followup.md).
"""

from lungtumor.followup.assess import Assessment, Target, assess
from lungtumor.followup.matching import GATE_MM, Match, lesion_labels, match_lesions
from lungtumor.followup.recist import DISCLAIMER, Response, classify, select_targets, volume_change
from lungtumor.followup.registration import POOR_RESIDUAL_MM, Registration, identity_registration, register

__all__ = [
    "DISCLAIMER",
    "GATE_MM",
    "POOR_RESIDUAL_MM",
    "Assessment",
    "Match",
    "Registration",
    "Response",
    "Target",
    "assess",
    "classify",
    "identity_registration",
    "lesion_labels",
    "match_lesions",
    "register",
    "select_targets",
    "volume_change",
]
