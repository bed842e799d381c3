/* test_schedule.c — learning-rate schedules give torch.optim.lr_scheduler's values
 * (parity/fixtures/optim/schedules.tsv from tests/parity/gen_optim_fixtures.py, epochs
 * 0..30, two parameter groups), and bad schedules are refused with one-line messages.
 * Bound: |graft - torch| <= 1e-7 |torch| (PyTorch's chainable forms differ from the
 * closed forms by rounding only). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "graft/graft.h"
#include "train/schedule.h"

#define BOUND 1e-7
#define TSV "parity/fixtures/optim/schedules.tsv"

static double worst_seen;

/* Compares every row of the fixture whose spec is `spec`; returns the rows checked. */
static int check_spec(const char *spec) {
    char *text = fx_read_text(TSV);
    if (!text) fail_msg("cannot read %s", TSV);
    graft_schedule s;
    if (graft_schedule_parse(spec, &s) != GRAFT_OK) fail_msg("%s: %s", spec, graft_errmsg());
    int rows = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *tab = strchr(line, '\t');
        assert_non_null(tab);
        *tab = 0;
        if (strcmp(line, spec) != 0) continue;
        char *p = tab + 1;
        long group = strtol(p, &p, 10);
        double base = strtod(p, &p);
        long long t = strtoll(p, &p, 10);
        double want = strtod(p, &p);
        double got = graft_schedule_lr(&s, base, t);
        double e = want != 0 ? fabs(got - want) / fabs(want) : fabs(got);
        if (e > worst_seen) worst_seen = e;
        if (!(e <= BOUND))
            fail_msg("%s group %ld t=%lld: graft %.17g, torch %.17g (relative error %.3g)", spec, group, t, got, want, e);
        rows++;
    }
    free(text);
    return rows;
}

/* 31 epochs times two groups */
#define ROWS_PER_SPEC 62

static void test_constant_schedule_keeps_the_base_rate(void **state) {
    (void)state;
    assert_int_equal(check_spec("constant"), ROWS_PER_SPEC);
}

static void test_step_schedule_matches_steplr(void **state) {
    (void)state;
    assert_int_equal(check_spec("step:step_size=7,gamma=0.1"), ROWS_PER_SPEC);
    assert_int_equal(check_spec("step:step_size=3,gamma=0.5"), ROWS_PER_SPEC);
}

static void test_cosine_schedule_matches_cosineannealinglr(void **state) {
    (void)state;
    assert_int_equal(check_spec("cosine:t_max=30"), ROWS_PER_SPEC);
}

static void test_cosine_schedule_past_t_max_matches_cosineannealinglr(void **state) {
    (void)state;
    /* T_max=10 over 30 epochs: PyTorch's curve rises again after T_max, and eta_min
     * is an absolute floor shared by both groups. */
    assert_int_equal(check_spec("cosine:t_max=10,eta_min=0.0001"), ROWS_PER_SPEC);
}

static void test_warmup_alone_matches_linearlr(void **state) {
    (void)state;
    assert_int_equal(check_spec("constant:warmup=4,warmup_factor=0.2"), ROWS_PER_SPEC);
}

static void test_warmup_then_cosine_matches_sequentiallr(void **state) {
    (void)state;
    assert_int_equal(check_spec("cosine:t_max=25,warmup=5,warmup_factor=0.1"), ROWS_PER_SPEC);
}

static void test_warmup_then_step_matches_sequentiallr(void **state) {
    (void)state;
    assert_int_equal(check_spec("step:step_size=5,gamma=0.1,warmup=3,warmup_factor=0.25"), ROWS_PER_SPEC);
}

static void test_negative_period_counts_as_zero(void **state) {
    (void)state;
    graft_schedule s;
    assert_int_equal(graft_schedule_parse("cosine:t_max=10,warmup=2,warmup_factor=0.5", &s), GRAFT_OK);
    assert_true(graft_schedule_lr(&s, 0.2, -3) == graft_schedule_lr(&s, 0.2, 0));
    assert_true(graft_schedule_lr(&s, 0.2, 0) == 0.1);
}

static void test_parse_fills_fields_and_keeps_defaults(void **state) {
    (void)state;
    graft_schedule s;
    assert_int_equal(graft_schedule_parse("step:step_size=30", &s), GRAFT_OK);
    assert_int_equal(s.kind, GRAFT_SCHEDULE_STEP);
    assert_int_equal(s.step_size, 30);
    assert_true(s.gamma == 0.1);
    assert_int_equal(s.warmup, 0);
    assert_int_equal(graft_schedule_parse("constant", &s), GRAFT_OK);
    assert_int_equal(s.kind, GRAFT_SCHEDULE_CONSTANT);
}

static void test_format_round_trips_through_parse(void **state) {
    (void)state;
    graft_schedule s = graft_schedule_defaults(), back;
    s.kind = GRAFT_SCHEDULE_COSINE;
    s.t_max = 90;
    s.eta_min = 1.0 / 3e5;
    s.warmup = 7;
    s.warmup_factor = 0.1;
    char buf[256];
    int n = graft_schedule_format(&s, buf, sizeof buf);
    assert_true(n > 0 && (size_t)n < sizeof buf);
    assert_int_equal(graft_schedule_parse(buf, &back), GRAFT_OK);
    assert_int_equal(back.kind, s.kind);
    assert_int_equal(back.t_max, s.t_max);
    assert_true(back.eta_min == s.eta_min); /* exactly: %.17g round-trips */
    assert_int_equal(back.warmup, s.warmup);
    assert_true(back.warmup_factor == s.warmup_factor);
    graft_schedule c = graft_schedule_defaults();
    graft_schedule_format(&c, buf, sizeof buf);
    assert_string_equal(buf, "constant");
}

static void expect_parse_error(const char *spec, const char *needle) {
    graft_schedule s = graft_schedule_defaults();
    s.step_size = 12345;
    assert_int_equal(graft_schedule_parse(spec, &s), GRAFT_ERR_INVALID);
    assert_int_equal(s.step_size, 12345); /* unchanged */
    if (!strstr(graft_errmsg(), needle)) fail_msg("'%s': message '%s' lacks '%s'", spec, graft_errmsg(), needle);
    assert_null(strchr(graft_errmsg(), '\n'));
}

static void test_unknown_kind_is_invalid(void **state) {
    (void)state;
    expect_parse_error("exponential:gamma=0.9", "unknown schedule 'exponential'");
}

static void test_unknown_key_is_invalid(void **state) {
    (void)state;
    expect_parse_error("step:step=3", "unknown key 'step'");
    expect_parse_error("cosine:t_max", "expected KEY=VALUE");
}

static void test_malformed_number_is_invalid(void **state) {
    (void)state;
    expect_parse_error("step:step_size=3x", "step_size expects an integer");
    expect_parse_error("step:gamma=", "bad value for gamma");
    expect_parse_error("cosine:eta_min=nan", "eta_min expects a number");
}

static void test_zero_step_size_is_invalid(void **state) {
    (void)state;
    expect_parse_error("step:step_size=0", "step_size must be >= 1");
}

static void test_zero_t_max_is_invalid(void **state) {
    (void)state;
    expect_parse_error("cosine:t_max=0", "t_max must be >= 1");
}

static void test_warmup_factor_outside_zero_to_one_is_invalid(void **state) {
    (void)state;
    expect_parse_error("constant:warmup=3,warmup_factor=1.5", "between 0 and 1");
    expect_parse_error("constant:warmup=-1", "warm-up length must be >= 0");
}

static void test_negative_gamma_or_eta_min_is_invalid(void **state) {
    (void)state;
    expect_parse_error("step:gamma=-0.1", "gamma must be finite and >= 0");
    expect_parse_error("cosine:t_max=5,eta_min=-1", "eta_min must be finite and >= 0");
}

static int report(void **state) {
    (void)state;
    printf("# schedule parity: max relative error %.3g\n", worst_seen);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_constant_schedule_keeps_the_base_rate),
        cmocka_unit_test(test_step_schedule_matches_steplr),
        cmocka_unit_test(test_cosine_schedule_matches_cosineannealinglr),
        cmocka_unit_test(test_cosine_schedule_past_t_max_matches_cosineannealinglr),
        cmocka_unit_test(test_warmup_alone_matches_linearlr),
        cmocka_unit_test(test_warmup_then_cosine_matches_sequentiallr),
        cmocka_unit_test(test_warmup_then_step_matches_sequentiallr),
        cmocka_unit_test(test_negative_period_counts_as_zero),
        cmocka_unit_test(test_parse_fills_fields_and_keeps_defaults),
        cmocka_unit_test(test_format_round_trips_through_parse),
        cmocka_unit_test(test_unknown_kind_is_invalid),
        cmocka_unit_test(test_unknown_key_is_invalid),
        cmocka_unit_test(test_malformed_number_is_invalid),
        cmocka_unit_test(test_zero_step_size_is_invalid),
        cmocka_unit_test(test_zero_t_max_is_invalid),
        cmocka_unit_test(test_warmup_factor_outside_zero_to_one_is_invalid),
        cmocka_unit_test(test_negative_gamma_or_eta_min_is_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, report);
}
