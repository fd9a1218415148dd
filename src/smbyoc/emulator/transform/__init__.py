"""Batch transform on the host: splitting objects into records, filters and joins, and assembling outputs.

``records`` splits (None, Line, RecordIO, TFRecord), decompresses (Gzip) and packs mini-batches;
``filters`` applies ``DataProcessing`` (InputFilter, OutputFilter, JoinSource); ``assemble`` writes the
``<object>.out`` bytes (AssembleWith). ``job`` runs a whole CreateTransformJob-shaped job (contract.md §4).
"""
