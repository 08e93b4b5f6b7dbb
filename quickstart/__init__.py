"""The quickstart: the whole SAIL pipeline (encode → align → evaluate) on the real sample data, on a CPU."""
