"""Results: one JSON record per estimate, in a folder per settings hash, and reading them back.

The public face. ``records`` holds the typed form of a record (``LLCRecord``, docs/formats.md);
``store`` writes and reads a settings folder (atomically, through ``llcv.fileio``), names it by
the settings hash, rebuilds its summary, and reads records back as a list or a DataFrame. The
modules behind this face are internal.
"""

from llcv.results.records import (
    DEFAULT_SCOPE,
    LLCRecord,
    NBETA_RULE_WORDS,
    RECORD_FORMAT,
    RECORD_FORMAT_VERSION,
    RecordResult,
    ran_in,
)
from llcv.results.store import (
    DEFAULT_LOSS,
    ResultsStore,
    Transition,
    check_scope,
    checkpoint_stem,
    choose_settings,
    find_transitions,
    fingerprint,
    health_label,
    is_done,
    list_settings,
    load_results,
    missing_checkpoints,
    record_stem,
    results_dataframe,
    run_labels,
    scope_order,
    settings_hash,
    step_from_name,
    summary_row,
)

__all__ = [
    "DEFAULT_LOSS",
    "DEFAULT_SCOPE",
    "NBETA_RULE_WORDS",
    "RECORD_FORMAT",
    "RECORD_FORMAT_VERSION",
    "check_scope",
    "checkpoint_stem",
    "choose_settings",
    "find_transitions",
    "fingerprint",
    "health_label",
    "is_done",
    "list_settings",
    "LLCRecord",
    "load_results",
    "missing_checkpoints",
    "ran_in",
    "record_stem",
    "RecordResult",
    "results_dataframe",
    "ResultsStore",
    "run_labels",
    "scope_order",
    "settings_hash",
    "step_from_name",
    "summary_row",
    "Transition",
]
