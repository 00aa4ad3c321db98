"""The commands that combine the floors below them: the benchmark and its cross-validation, the
end-to-end demo, and ``verify``. Each is built from training, downstream and evaluation pieces,
never its own copies of them."""
