package loader

import (
	"slices"
	"testing"
)

func TestOrderFor(t *testing.T) {
	for release, first := range map[string]Mode{
		"5.10.0-46-cloud-amd64": ModeRawTp,
		"5.4.0":                 ModeRawTp,
		"5.11.0":                ModeFentry,
		"6.1.0-57-cloud-arm64":  ModeFentry,
		"6.18.3":                ModeFentry,
		"garbage":               ModeFentry,
	} {
		order := OrderFor(release)
		if order[0] != first {
			t.Errorf("%s: auto starts with %s, want %s", release, order[0], first)
		}
		sorted := slices.Clone(order)
		slices.Sort(sorted)
		all := slices.Clone(AutoOrder)
		slices.Sort(all)
		if !slices.Equal(sorted, all) {
			t.Errorf("%s: order %v does not hold every flavour once", release, order)
		}
	}
}
