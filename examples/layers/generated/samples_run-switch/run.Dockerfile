FROM imgext-test/run-alt:bookworm
