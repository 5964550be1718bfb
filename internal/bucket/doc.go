// Package bucket maps raw TCP smoothed RTTs (tcp_sock.srtt_us, in units of
// 1/8 µs) to OpenTelemetry exponential-histogram bucket indexes, and builds
// the lookup tables the BPF program uses to do the same thing in O(1) without
// floating point.
//
// Exactness rule. At scale s the base is 2^(2^-s) and bucket i holds the
// values v with base^i < v <= base^(i+1). With v = raw/D (D = raw units per
// export unit) the test "v > base^i" is equivalent to the integer inequality
// raw^(2^s) > 2^i * D^(2^s) (multiply the other side for i < 0). Every answer
// this package gives is decided by that inequality evaluated with math/big;
// floats are only used as first guesses that are then corrected, because a
// float log2 can land on the wrong side of a boundary and the kernel and
// user space must agree bit for bit.
//
// Table method. Doubling raw multiplies v by 2 = base^(2^s), so it adds
// exactly 2^s to the index. A raw value is therefore fully described by its
// octave k = floor(log2(raw)) and its mantissa: normalise it to
// norm = raw << (31-k) (bit 31 set; no bits are lost because raw has at most
// 32 significant bits), and the index is (k << s) plus the index of norm
// within the top octave. The top octave is cut into 512 equal cells by the 9
// bits after the leading one; a cell is narrower than a bucket even at scale
// 8, so it contains at most one bucket boundary. Each cell stores the bucket
// of its first value (Base) and the largest norm still in that bucket
// (Threshold), so the kernel computes
//
//	position = (k << s) + Base + (norm > Threshold)
//
// with a count-leading-zeros, two shifts and one compare. Positions are
// relative to MinIndex, the bucket of raw = 1, so they are never negative and
// can index a flat BPF array directly.
package bucket
