/* progress.c — a download progress bar on a terminal: bytes, rate, ETA. */
#include <stdio.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/clock.h"

void cli_progress_init(cli_progress *p, const char *label) {
    p->label = label;
    p->start = graft_now_seconds();
    p->last_draw = 0;
    p->drawn = 0;
    p->tty = isatty(STDERR_FILENO);
}

void cli_progress_update(void *user, uint64_t done, uint64_t total) {
    cli_progress *p = user;
    if (!p->tty) return;
    double t = graft_now_seconds();
    if (t - p->last_draw < 0.1 && (total == 0 || done < total)) return;
    p->last_draw = t;
    double elapsed = t - p->start, rate = elapsed > 0 ? done / elapsed : 0;
    const double mb = 1024.0 * 1024.0;
    if (total) {
        double eta = rate > 0 ? (total - done) / rate : 0;
        int width = 24, filled = (int)(width * (double)done / total);
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < filled ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r%s [%s] %.1f/%.1f MB %.1f MB/s ETA %d:%02d ", p->label, bar, done / mb, total / mb,
                rate / mb, (int)eta / 60, (int)eta % 60);
    } else {
        fprintf(stderr, "\r%s %.1f MB %.1f MB/s ", p->label, done / mb, rate / mb);
    }
    p->drawn = 1;
}

void cli_progress_end(cli_progress *p) {
    if (p->drawn) fputc('\n', stderr);
}
