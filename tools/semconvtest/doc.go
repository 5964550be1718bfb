// Package semconvtest is empty: see go.mod for why it exists.
package semconvtest
