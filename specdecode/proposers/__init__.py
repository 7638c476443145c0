"""Who guesses: every proposer returns a `Proposal` for the verifier."""

from specdecode.proposers.base import Proposal, Proposer
from specdecode.proposers.draft_model import DraftModelProposer

__all__ = ["DraftModelProposer", "Proposal", "Proposer"]
