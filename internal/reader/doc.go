// Package reader is the user-space half of the protocol between the
// tcprtt program (bpf/tcprtt.bpf.c) and the collector: it reads the
// counts the program keeps, hands the program's cache entries back, and
// runs the series lifecycle (internal/lifecycle). It works on plain
// memory — the three arrays the loader mmaps, byte slices in tests — and
// on the other maps through Maps, so every step is testable without a
// kernel, in the order production calls it (TestSchedules).
//
// # Shared words and who writes them
//
//	counts[slot]     row: generation (user space only), zero count, buckets.
//	                 The program adds (atomic); user space adds drained and
//	                 late counts (atomic) and clears a row before releasing it.
//	cpu_sums[cpu]    per slot, the raw srtt sum counted in the row by that CPU.
//	                 The program adds on its own CPU's line (plain); user
//	                 space only reads it, and zeroes it in a cleared row.
//	retrans[slot]    the segments the retransmit program counted for the row.
//	                 The program adds (atomic); user space reads it with the
//	                 row (one word: any load is a reading), adds late
//	                 retransmits of a retired row to the key's new row
//	                 (atomic), and zeroes it in a cleared row. What it adds
//	                 is a socket's growth in total_retrans since its previous
//	                 run (retrans_seen, a map only the program reads).
//	sk_cache[entry]  per CPU, a direct-mapped socket cache: identity, slot,
//	                 window base, eight counts, sum, seq. The program writes
//	                 an entry it takes (free or filtered ones only), adds to
//	                 the counts and sum of an entry of its own CPU that holds
//	                 its socket, and moves the window (counts to the row, sum
//	                 to its CPU's sum) with seq odd meanwhile. User space
//	                 writes only the slot word of an entry it marks to drain
//	                 (compare-and-swap) and, later, the whole entry it frees.
//
// # An entry's states
//
//	free ──program takes it──▶ held(slot) ──user space marks it──▶ marked(slot|drain)
//	  ▲                                                                │
//	  └──── user space drains it: counts to the row, sum to the carry ◀┘
//	        (at a read at least one read after the mark, with seq even)
//
// A filtered entry (slot FILTERED) caches a socket the filters refuse; the
// program may take it over for another socket at any time. User space
// marks an entry when its row is retired, when it counted nothing since
// the previous read (idle), and, for the overflow row, when rows are free
// again (its sockets then resolve their series anew).
//
// A row's states are the lifecycle's: free ▶ live ▶ retired (key out of
// the index, holders marked) ▶ waiting (while a holder remains) ▶ read a
// last time ▶ cleared ▶ released (free).
//
// # The order of a read
//
//  1. Scan the cache: drain entries marked at an earlier read; note the
//     holders of each row.
//  2. Read the series index.
//  3. Finish rows retired at earlier reads (lifecycle.FreeRetired): their
//     final points, late samples folded into the key's new row.
//  4. Per indexed series (rows being retired excepted): read its row and
//     its sum together, then its retransmits, then let the lifecycle
//     observe it (it may retire; retransmits count as activity).
//  5. Read the overflow row; send overflowed sockets looking for free rows.
//  6. List the rows retired and not yet released (Snapshot.Pending).
//  7. Mark idle entries; read the program's counters.
//
// # Assumption
//
// A0: a program run that found an entry holding a row, or a key in the
// index, ends before the next read (an interval later). The one case a
// kernel can stretch — a run preempted while it moves its window — is
// seen (seq stays odd) and waited for (I4).
//
// # Invariants, and the tests that check them
//
//   - I1 A count is in one place at a time, an entry's window or its row:
//     a read never counts a sample twice and, once quiet, counts every
//     one. TestSchedules (exact per key, bucket and sum after quiescing);
//     kernel: TestCacheEntryDrainsExactly, internal/oracle (every test).
//   - I2 A row's reading is exact when no holder's seq changed across it;
//     otherwise it is tried again (at most 4 times, fewer once the read's
//     context is done), then kept as a lower bound raised bucket by bucket
//     to the previous reading: a read always ends, never double counts,
//     never reports less than the one before. TestReadEndsWhileAMoveIsPreempted;
//     kernel: TestReadEndsWhileAnEntryMoves.
//   - I3 An entry seen holding a row is seen with its base and counts: the
//     program publishes the slot after a full barrier, user space loads it
//     with acquire. TestTakePublishesSlotAfterBarrier.
//   - I4 An entry is drained only at a read after the one that marked it,
//     and only with seq even. TestSchedules, TestReadEndsWhileAMoveIsPreempted.
//   - I5 The lifecycle sees a series' counts and sum from one reading, so
//     late samples of a retired row carry only their own sum.
//     TestSchedules; kernel: TestRetiredRowLateSamplesJoinNewRow,
//     oracle.TestIdleExpiryLateSamples.
//   - I6 A retired series' stream continues until its final point: rows
//     waiting for holders are pending (the converter keeps their state),
//     and a row still indexed because taking its key out failed is left
//     to the lifecycle. TestRetiredRowsCountWhileTheyWait,
//     TestPendingSeriesContinueTheirStream, TestSchedules.
//   - I7 Samples recorded (live totals plus Expired, which includes rows
//     waiting) never go down. TestSchedules; kernel: TestSelfTelemetry.
//   - I8 A batch never holds two points with the same attributes.
//     TestSchedules, TestLateSamplesFoldIntoTheKeysNewRow.
//   - I9 Delta points add up to the cumulative ones at every read (a sum
//     that moved without its count goes out too). TestSchedules; kernel:
//     TestDeltasAddUpToCumulative.
//   - I10 An active entry is never seen idle, also where the program
//     counts in the rows only (its misses word counts the samples then).
//     TestRowOnlyEntriesStayWhileActive.
//   - I11 Every run of the hook ends in one place: a count, the filtered
//     or errors counter, or a missed run. Kernel: TestAccountingIdentity,
//     internal/oracle (every count, bucket and sum equal to a plain
//     program's on the same hook).
package reader
