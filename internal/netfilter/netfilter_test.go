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
