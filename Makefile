# The two commands of the README. Both install what is missing first.
.PHONY: run test test-security bench stop
run:   ## build, install, start a local cluster, run the demo, print the connection string
	bash scripts/demo.sh
test:  ## every test: unit, #[pg_test], pg_regress scenarios, integration, Stripe SDK cross-check
	bash scripts/test.sh
test-security: ## the attack tests alone (tests/security.rs); needs the extension installed (make test does it)
	cargo test --no-default-features --features pg15 --test security -- --test-threads=2
bench: ## the benchmarks of docs/BENCHMARKS.md
	bash scripts/bench.sh
stop:  ## stop the demo cluster
	bash scripts/cluster.sh stop .run/demo
