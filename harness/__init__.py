"""The proving harness, apart from the platform it proves: the provider sandbox (real SMTP and HTTP servers that
play the vendors), the fault drills (`make chaos`), the benchmarks (`make bench`) and the real processes they
start. The platform never imports it; production settings do not install it."""
