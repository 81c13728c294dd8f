"""The librarian kernel: a document index with BM25 search and similar documents."""
