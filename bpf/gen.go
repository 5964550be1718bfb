// Package bpf holds the tcprtt eBPF program (tcprtt.bpf.c) and its bpf2go
// output, committed so that `go get` and ocb builds need no clang, and the
// benchmark-only programs of make bench (bench.bpf.c: the empty baseline,
// the reference-style program and the cost-probe variants), in an object of
// their own that the receiver never loads, and the tests' reference program
// (oracle.bpf.c, loaded by internal/oracle only).
//
// Regenerating needs clang, llvm-strip and the libbpf headers (Debian:
// clang llvm libbpf-dev). <linux/bpf.h> includes <asm/types.h>, which
// Debian keeps in the multiarch directory: both common ones are searched
// (missing ones are ignored), and debug info is stripped, so the output
// does not depend on the machine that generates it.
package bpf

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu" -target bpfel Tcprtt tcprtt.bpf.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu" -target bpfel Bench bench.bpf.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -idirafter /usr/include/x86_64-linux-gnu -idirafter /usr/include/aarch64-linux-gnu" -target bpfel Oracle oracle.bpf.c
