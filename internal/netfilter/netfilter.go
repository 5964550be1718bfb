// Package netfilter parses the address filters shared by the receiver's
// config and the tcprtt command, with one set of rules.
package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ParsePrefix accepts an IP (taken as a /32 or /128) or a CIDR without
// host bits, IPv4 or IPv6. An IPv4-mapped IPv6 prefix becomes the IPv4
// one, as the program counts v4-mapped sockets as IPv4. The error says
// what is wrong with s without repeating it, for the caller to prefix
// with the key and the value.
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, errors.New("is not a valid CIDR (want e.g. 10.0.0.0/8 or 2001:db8::/32)")
		}
		if p.Masked() != p {
			return p, fmt.Errorf("has host bits set; did you mean %s?", p.Masked())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, errors.New("is not a valid IP address or CIDR")
		}
		if a.Zone() != "" { // PrefixFrom would silently drop it
			return p, errors.New("has an IPv6 zone, which cannot be matched")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p, nil
}

// v4Mapped is where the program keeps IPv4 addresses: every IPv4 socket
// (and every v4-mapped IPv6 one) is keyed by its ::ffff:a.b.c.d form.
var v4Mapped = netip.MustParsePrefix("::ffff:0:0/96")

// MaxKernelPrefixes is the most entries KernelPrefixes makes of one
// prefix: ::/0 without ::ffff:0:0/96 takes 96.
const MaxKernelPrefixes = 96

// KernelPrefixes returns the entries of the program's LPM filter that
// make ps mean what it says. The program stores IPv4 addresses v4-mapped,
// so an IPv6 prefix that covers ::ffff:0:0/96 (::/0, ::/64, …) would also
// match every IPv4 socket; an IPv6 prefix matches IPv6 sockets only, so
// such a prefix P is replaced by the prefixes of P minus ::ffff:0:0/96:
// one for each bit from P's length to 95, the sibling of the path down to
// ::ffff:0:0/96 (96 - len(P) entries, at most MaxKernelPrefixes). IPv4
// prefixes, and IPv6 prefixes beside the v4-mapped block, pass unchanged;
// a v4-mapped prefix (::ffff:10.0.0.0/104) is the IPv4 one, as
// ParsePrefix gives it.
func KernelPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		a := p.Addr()
		switch {
		case a.Is4In6() && p.Bits() >= 96:
			out = append(out, netip.PrefixFrom(a.Unmap(), p.Bits()-96))
		case a.Is6() && p.Bits() < 96 && p.Contains(v4Mapped.Addr()):
			path := v4Mapped.Addr().As16()
			for b := p.Bits(); b < 96; b++ {
				sib := path
				sib[b/8] ^= 0x80 >> (b % 8)
				out = append(out, netip.PrefixFrom(netip.AddrFrom16(sib), b+1).Masked())
			}
		default:
			out = append(out, p)
		}
	}
	return out
}
