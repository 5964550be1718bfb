//go:build race

package reader

// raceEnabled: the race detector slows the harness about tenfold.
const raceEnabled = true
