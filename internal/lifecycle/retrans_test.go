package lifecycle

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRetransmitsKeepASeriesAlive: a series whose RTT samples stop while
// its sockets keep retransmitting is active, not idle; once both stop it
// expires like any other.
func TestRetransmitsKeepASeriesAlive(t *testing.T) {
	r := newReader(t, 4, time.Minute)
	r.f.index[key(1)] = 0
	r.f.count(0, 3, 80, 5)
	require.NoError(t, r.read(0))
	for range 3 {
		r.f.row(0).Retransmits += 2
		require.NoError(t, r.read(50*time.Second))
		assert.Contains(t, r.f.index, key(1), "retransmitting: not idle")
	}
	require.NoError(t, r.read(61*time.Second))
	assert.NotContains(t, r.f.index, key(1), "no samples and no retransmits for the timeout: retired")
}

// TestSeriesWithOnlyRetransmitsExpires: a series that only retransmitted
// (no RTT sample) is observed and expires; retransmits counted after it
// was retired go out in its final point.
func TestSeriesWithOnlyRetransmitsExpires(t *testing.T) {
	r := newReader(t, 4, time.Minute)
	r.f.index[key(1)] = 0
	r.f.row(0).Retransmits = 3
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(61*time.Second))
	assert.NotContains(t, r.f.index, key(1))

	r.f.row(0).Retransmits++ // a run that resolved the row before it was retired
	require.NoError(t, r.read(time.Second))
	require.Len(t, r.out, 1, "a late retransmit: a final point")
	assert.Equal(t, uint64(4), r.out[0].Retransmits)
	assert.Zero(t, r.out[0].Total)
	assert.Equal(t, []uint32{0}, r.f.free)
}

// TestLateRetransmitsJoinTheKeysNewRow: retransmits that land in a
// retired row after its key took a new row move to the new row, as late
// samples do.
func TestLateRetransmitsJoinTheKeysNewRow(t *testing.T) {
	r := newReader(t, 4, time.Minute)
	r.f.index[key(1)] = 0
	r.f.count(0, 3, 80, 5)
	r.f.row(0).Retransmits = 2
	require.NoError(t, r.read(0))
	require.NoError(t, r.read(61*time.Second))
	require.NotContains(t, r.f.index, key(1))

	r.f.index[key(1)] = 1 // the key's next socket took a new row
	r.f.row(0).Retransmits += 3
	require.NoError(t, r.read(time.Second))
	assert.Empty(t, r.out, "late retransmits joined the live row: no final point")
	assert.Equal(t, uint64(3), r.f.added[1].Retransmits)
	assert.Equal(t, uint64(3), r.f.row(1).Retransmits)
	assert.Zero(t, r.f.added[1].Total, "no samples moved")
}
