# exercises.awk: rewrites the exercise regions of a source file. Used by the Makefile only.
#
# A region is the lines between
#     // BEGIN EXERCISE <id>
#     // END EXERCISE
# and its <id> names it ("topo_sort", "03.2"). Two modes:
#
#   awk -v mode=blank [-v only=<id>] -f exercises.awk file.cpp
#       every region (or just <id>) becomes   throw not_implemented("<id>");
#   awk -v mode=splice -f exercises.awk solutions.cpp file.cpp
#       every region of file.cpp gets the body of the region with the same id in solutions.cpp
#
# The result goes to standard output; the input files are never changed.

function region_id(line) {
    sub(/.*BEGIN EXERCISE[ \t]+/, "", line)
    sub(/[ \t:].*/, "", line)
    return line
}

FNR == 1 { file_index++ }

# splice, first file: remember each solution body by id.
mode == "splice" && file_index == 1 {
    if ($0 ~ /BEGIN EXERCISE/) { id = region_id($0); solution[id] = ""; collecting = 1; next }
    if ($0 ~ /END EXERCISE/) { collecting = 0; next }
    if (collecting) solution[id] = solution[id] $0 "\n"
    next
}

$0 ~ /BEGIN EXERCISE/ {
    print
    id = region_id($0)
    replacing = (mode == "splice") || only == "" || only == id
    if (!replacing) next
    if (mode == "splice") {
        if (!(id in solution)) { print "exercises.awk: no solution for region " id > "/dev/stderr"; failed = 1; exit 1 }
        printf "%s", solution[id]
    } else {
        indent = $0; sub(/[^ \t].*/, "", indent)
        print indent "throw not_implemented(\"" id "\");"
    }
    skipping = 1
    next
}
$0 ~ /END EXERCISE/ { skipping = 0; found[id] = 1 }
skipping { next }
{ print }

END {
    if (failed) exit 1
    if (only != "" && !(only in found)) { print "exercises.awk: no region named " only > "/dev/stderr"; exit 1 }
}
