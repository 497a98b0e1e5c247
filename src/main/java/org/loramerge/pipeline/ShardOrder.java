package org.loramerge.pipeline;

import java.util.ArrayList;
import java.util.List;

/**
 * The order in which a merge schedules its output tensors when it writes several shards at once:
 * up to {@code lanes} shards are open, and the next tensor comes from the open shard that is least
 * far along, the earlier shard on a tie; a shard whose tensors are all scheduled makes room for
 * the next in plan order. When every shard fits in the lanes, "far along" is the share of its
 * bytes scheduled, so the files fill at the same pace and end together; when shards wait for a
 * lane, it is the bytes scheduled since the shard opened plus where the least advanced open shard
 * stood then (fair queueing), so a newly opened shard takes its turn beside the others instead of
 * all the turns until it has caught up with their shares. A new shard is never ahead of an open
 * one, so shards are opened in plan order. With one lane it is plan order. Every tensor's place
 * in its file is fixed by the plan, so the order changes when bytes are written, never which.
 */
final class ShardOrder {
    /**
     * Tensor {@code tensor} of shard {@code shard} (plan indices; tensor -1 for a shard without tensors),
     * and whether it is the shard's first (open the file before it) and last (finish the file after it);
     * {@code lane}: which of the {@code lanes} places the shard holds while it is open, none held by another.
     */
    record Step(int shard, int tensor, boolean first, boolean last, int lane) {
    }

    private ShardOrder() {
    }

    /** The steps for shards whose tensors have these sizes in bytes ({@code sizes[shard][tensor]}), {@code lanes} (>= 1) open at once. */
    static List<Step> of(long[][] sizes, int lanes) {
        if (lanes < 1) {
            throw new IllegalArgumentException("lanes " + lanes + " < 1");
        }
        List<Step> steps = new ArrayList<>();
        List<int[]> open = new ArrayList<>(); // {shard, next tensor, lane}
        boolean[] taken = new boolean[lanes];
        long[] total = new long[sizes.length];
        long[] done = new long[sizes.length];
        boolean together = sizes.length <= lanes;
        for (int s = 0; s < sizes.length; s++) {
            for (long b : sizes[s]) {
                total[s] += b;
            }
        }
        int waiting = 0;
        while (waiting < sizes.length || !open.isEmpty()) {
            while (open.size() < lanes && waiting < sizes.length) {
                int free = 0;
                while (taken[free]) {
                    free++;
                }
                taken[free] = true;
                if (!together) {
                    // fair queueing: the new shard starts where the least advanced open one stands
                    long least = Long.MAX_VALUE;
                    for (int[] o : open) {
                        least = Math.min(least, done[o[0]]);
                    }
                    done[waiting] = open.isEmpty() ? 0 : least;
                }
                open.add(new int[] {waiting++, 0, free});
            }
            int pick = 0;
            for (int i = 1; i < open.size(); i++) {
                if (together ? behind(open.get(i)[0], open.get(pick)[0], done, total) : behindInBytes(open.get(i)[0], open.get(pick)[0], done)) {
                    pick = i;
                }
            }
            int[] lane = open.get(pick);
            int s = lane[0];
            if (sizes[s].length == 0) {
                steps.add(new Step(s, -1, true, true, lane[2]));
                taken[lane[2]] = false;
                open.remove(pick);
                continue;
            }
            int t = lane[1]++;
            done[s] += sizes[s][t];
            boolean last = lane[1] == sizes[s].length;
            steps.add(new Step(s, t, t == 0, last, lane[2]));
            if (last) {
                taken[lane[2]] = false;
                open.remove(pick);
            }
        }
        return steps;
    }

    /** Whether shard {@code a} has had fewer bytes (counted from where it started) than {@code b} (a later shard only when strictly fewer). */
    private static boolean behindInBytes(int a, int b, long[] done) {
        return done[a] < done[b] || (done[a] == done[b] && a < b);
    }

    /** Whether shard {@code a} is less far along than {@code b} by share of its bytes (a later shard only when strictly so). */
    private static boolean behind(int a, int b, long[] done, long[] total) {
        // done[a] / total[a] < done[b] / total[b], without division; an empty total counts as 1
        double left = (double) done[a] * Math.max(1, total[b]);
        double right = (double) done[b] * Math.max(1, total[a]);
        return left < right || (left == right && a < b);
    }
}
