#!/usr/bin/env bash
# verdict.sh LOG NAME ARCH EXPECTED SECONDS QEMU_RC TIMEOUT: reads one VM's
# serial log and prints its result line, PASS only if every package's tests
# passed, the flavours that attached are exactly EXPECTED (comma-separated),
# and each of them passed the TCP_INFO checks of the loader and the receiver.
set -uo pipefail
log=$1 name=$2 arch=$3 expected=$4 secs=$5 qrc=$6 limit=$7
problems=()
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
	problems+=("VM killed after ${limit}s")
fi
done_rc=$(sed -n 's/^@@tcprtt done exit \([0-9]*\)$/\1/p' "$log" | tail -1)
if [ -z "$done_rc" ]; then
	problems+=("no end marker (crash, panic or hang)")
elif [ "$done_rc" != 0 ]; then
	failed=$(sed -n 's/^@@tcprtt \([a-z]*\) exit [1-9][0-9]*$/\1/p' "$log" | paste -sd, -)
	problems+=("tests failed in: $failed ($(grep -c -- '--- FAIL' "$log") FAIL lines)")
fi

attached=() refused=()
while read -r mode verdict cause; do
	if [ "$verdict" = attached ]; then
		attached+=("$mode")
		for t in "TestSocketReads/$mode/helper_reads=false" "TestSocketReads/$mode/helper_reads=true" \
			"TestSocketReads/$mode/row_counts" \
			"TestRecordedSRTTMatchesTCPInfo/$mode"; do
			grep -qF -- "--- PASS: $t " "$log" || problems+=("$t did not pass")
		done
	else
		refused+=("$mode($cause)")
	fi
done < <(sed -n 's/^ *flavours_linux_test.go:[0-9]*: tcprtt-flavour \([a-z_]*\) \(attached\|refused\)\( (\([^)]*\))\)\{0,1\}.*/\1 \2 \4/p' "$log")

got=$(IFS=,; echo "${attached[*]}")
if [ ${#attached[@]} -eq 0 ] && [ ${#refused[@]} -eq 0 ]; then
	problems+=("no tcprtt-flavour lines (TestFlavours did not run)")
elif [ "$(tr , '\n' <<<"$got" | sort | paste -sd,)" != "$(tr , '\n' <<<"$expected" | sort | paste -sd,)" ]; then
	problems+=("attached {$got}, expected {$expected} (tools/kernels/matrix)")
fi

verdict=PASS
[ ${#problems[@]} -eq 0 ] || verdict=FAIL
line=$(printf '%-6s %-6s %-5s attached: %s; refused: %s; %ss' "$name" "$arch" "$verdict" \
	"${got:-none}" "$(IFS=' '; echo "${refused[*]:-none}")" "$secs")
if [ $verdict = FAIL ]; then
	line+=" — $(IFS=';'; echo "${problems[*]}") (log: $log)"
fi
echo "$line"
