"""Optional bridges to other frameworks' policies (each import-guarded)."""
