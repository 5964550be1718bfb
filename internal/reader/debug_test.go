package reader

import (
	"fmt"
	"os"
)

func debugf(format string, args ...any) {
	if os.Getenv("HARNESS_DEBUG") != "" {
		fmt.Printf(format, args...)
	}
}
