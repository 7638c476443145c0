"""Who guesses: every proposer returns a `Proposal` for the verifier."""

from specdecode.proposers.base import Proposal, Proposer
from specdecode.proposers.draft_model import DraftModelProposer
from specdecode.proposers.ngram import NgramProposer, NgramThenDraftProposer
from specdecode.proposers.tree import TreeProposer

__all__ = ["DraftModelProposer", "NgramProposer", "NgramThenDraftProposer", "Proposal", "Proposer", "TreeProposer"]
