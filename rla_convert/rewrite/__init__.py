"""The graph rewriter: capture a model's graph, locate attention sites, swap in RLA/RDN layers."""
from .capture import Site, capture_sites
from .registry import ADAPTERS, adapter_for, supported_summary
from .rewriter import RewriteReport, rewrite_model

__all__ = ["ADAPTERS", "RewriteReport", "Site", "adapter_for", "capture_sites", "rewrite_model", "supported_summary"]
