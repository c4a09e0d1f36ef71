"""Data: IndexedDataset writing, merging, validation and packing (torch-free)."""
