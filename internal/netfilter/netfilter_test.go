package netfilter

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParsePrefix(t *testing.T) {
	good := map[string]string{
		"10.0.0.0/8":          "10.0.0.0/8",
		"127.0.0.1":           "127.0.0.1/32",
		" 192.168.1.0/24 ":    "192.168.1.0/24",
		"::1":                 "::1/128",
		"2001:db8::/32":       "2001:db8::/32",
		"::ffff:10.0.0.0/104": "10.0.0.0/8",
		"::ffff:10.1.2.3":     "10.1.2.3/32",
		"0.0.0.0/0":           "0.0.0.0/0",
		"::ffff:0.0.0.0/96":   "0.0.0.0/0",
		"::/0":                "::/0",
	}
	for in, want := range good {
		p, err := ParsePrefix(in)
		require.NoError(t, err, in)
		assert.Equal(t, netip.MustParsePrefix(want), p, in)
	}
	bad := map[string]string{
		"10.0.0.1/8":     "did you mean 10.0.0.0/8",
		"2001:db8::1/32": "did you mean 2001:db8::/32",
		"10.0.0.0/33":    "not a valid CIDR",
		"::/129":         "not a valid CIDR",
		"10.0.0.256":     "not a valid IP",
		"example.com":    "not a valid IP",
		"":               "not a valid IP",
		"fe80::1%eth0":   "zone",
	}
	for in, want := range bad {
		_, err := ParsePrefix(in)
		assert.ErrorContains(t, err, want, in)
	}
}

// The kernel entries of a prefix match exactly the addresses the prefix
// means: an IPv6 prefix no v4-mapped address, a v4 prefix its IPv4
// addresses (stored v4-mapped by the program).
func TestKernelPrefixes(t *testing.T) {
	mapped := func(s string) netip.Addr { return netip.AddrFrom16(netip.MustParseAddr(s).As16()) }
	// matches is what the program's LPM lookup does with the entries:
	// IPv4 entries as their v4-mapped /96+len form, addresses v4-mapped.
	matches := func(entries []netip.Prefix, a netip.Addr) bool {
		k := netip.AddrFrom16(a.As16())
		for _, e := range entries {
			if e.Addr().Is4() {
				e = netip.PrefixFrom(netip.AddrFrom16(e.Addr().As16()), 96+e.Bits())
			}
			if e.Contains(k) {
				return true
			}
		}
		return false
	}
	v4 := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("255.255.255.255")}
	for _, tc := range []struct {
		in      string
		entries int
		v6In    []string // IPv6 addresses it must match
		v6Out   []string // and must not
		v4Match bool     // whether it matches the IPv4 addresses above
	}{
		{"::/0", 96, []string{"::1", "2001:db8::1", "fe80::1", "::", "::fffe:ffff:ffff", "::1:0:0:0"}, nil, false},
		{"::/64", 32, []string{"::1", "::ffff:0:0:1"}, []string{"2001:db8::1"}, false},
		{"::/80", 16, []string{"::1", "::fffe:0:1"}, []string{"::1:0:0:0"}, false},
		{"::ffc0:0:0/90", 6, []string{"::ffc0:0:0", "::fffe:0:1"}, []string{"::1"}, false},
		{"::/96", 1, []string{"::1", "::"}, []string{"::ffff:0:1"}, false},
		{"2001:db8::/32", 1, []string{"2001:db8::1"}, []string{"::1"}, false},
		{"::1/128", 1, []string{"::1"}, []string{"::2"}, false},
		{"0.0.0.0/0", 1, nil, []string{"::1", "2001:db8::1"}, true},
	} {
		p, err := ParsePrefix(tc.in)
		require.NoError(t, err, tc.in)
		got := KernelPrefixes([]netip.Prefix{p})
		assert.Len(t, got, tc.entries, "%s: %v", tc.in, got)
		assert.LessOrEqual(t, len(got), MaxKernelPrefixes)
		for _, e := range got {
			assert.Equal(t, e.Masked(), e, "%s: entry %s has host bits", tc.in, e)
		}
		for _, s := range tc.v6In {
			assert.True(t, matches(got, netip.MustParseAddr(s)), "%s must match %s (entries %v)", tc.in, s, got)
		}
		for _, s := range tc.v6Out {
			assert.False(t, matches(got, netip.MustParseAddr(s)), "%s must not match %s", tc.in, s)
		}
		for _, a := range v4 {
			assert.Equal(t, tc.v4Match, matches(got, a), "%s and IPv4 %s", tc.in, a)
			assert.Equal(t, tc.v4Match, matches(got, mapped(a.String())), "%s and v4-mapped %s", tc.in, a)
		}
	}
	// Written v4-mapped, it is the IPv4 prefix.
	for in, want := range map[string]string{"::ffff:127.0.0.0/104": "127.0.0.0/8", "::ffff:0:0/96": "0.0.0.0/0"} {
		p, err := ParsePrefix(in)
		require.NoError(t, err)
		got := KernelPrefixes([]netip.Prefix{p})
		assert.Equal(t, []netip.Prefix{netip.MustParsePrefix(want)}, got, in)
		assert.True(t, matches(got, netip.MustParseAddr("127.0.0.1")), in)
		assert.False(t, matches(got, netip.MustParseAddr("::1")), in)
	}
	// Unparsed v4-mapped input is unmapped too.
	assert.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
		KernelPrefixes([]netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")}))
}
