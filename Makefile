# The two commands of the README. Both install what is missing first.
.PHONY: run reset test test-security bench stop
run:   ## build, install, start the demo cluster (reused with its data if it exists, else created and the demo run), print the connection string
	bash scripts/demo.sh
reset: ## delete the demo cluster and its data, then create it anew and run the demo
	bash scripts/demo.sh --reset
test:  ## every test: unit, #[pg_test], pg_regress scenarios, integration, Stripe SDK cross-check
	bash scripts/test.sh
test-security: ## the attack tests alone (tests/security.rs); needs the extension installed (make test does it)
	cargo test --no-default-features --features pg15 --test security -- --test-threads=2
bench: ## the benchmarks of docs/BENCHMARKS.md
	bash scripts/bench.sh
stop:  ## stop the demo cluster
	bash scripts/cluster.sh stop .run/demo
