// Package bpf holds the tcprtt eBPF program (tcprtt.bpf.c) and its bpf2go
// output, committed so that `go get` and ocb builds need no clang.
package bpf

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel Tcprtt tcprtt.bpf.c
