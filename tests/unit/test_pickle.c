/* test_pickle.c — the pickle virtual machine (io/pickle.h) on hand-built byte strings.
 *
 * Each pickle is written out opcode by opcode (names in the comments, as
 * pickletools.dis prints them) or was produced by CPython's pickle.dumps at the
 * protocol named; the result is checked through graft_pickle_repr, which prints
 * Python's repr (ints too wide for int64 in hex). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/strbuf.h"
#include "graft/graft.h"
#include "io/pickle.h"

/* A string literal as (bytes, length), without the terminating NUL. */
#define B(lit) (const unsigned char *)(lit), sizeof(lit) - 1

/* ---- helpers ------------------------------------------------------------------------ */

static char *repr_of(const graft_pickle_obj *o, int depth) {
    graft_strbuf sb;
    graft_strbuf_init(&sb);
    graft_pickle_repr(o, depth, &sb);
    return graft_strbuf_take(&sb);
}

static void expect_repr(const unsigned char *bytes, size_t n, const char *want) {
    graft_pickle *pk;
    assert_int_equal(graft_pickle_create(NULL, &pk), GRAFT_OK);
    graft_pickle_obj *root;
    size_t used = 0;
    graft_status s = graft_pickle_load(pk, bytes, n, &root, &used);
    if (s) fail_msg("load failed: %s", graft_errmsg());
    assert_int_equal(used, n);
    char *got = repr_of(root, 50);
    assert_string_equal(got, want);
    free(got);
    graft_pickle_free(pk);
}

static void expect_error_with(const graft_pickle_limits *lim, const unsigned char *bytes,
                              size_t n, const char *part) {
    graft_pickle *pk;
    assert_int_equal(graft_pickle_create(lim, &pk), GRAFT_OK);
    graft_pickle_obj *root = (graft_pickle_obj *)&root;
    graft_status s = graft_pickle_load(pk, bytes, n, &root, NULL);
    if (s != GRAFT_ERR_FORMAT) fail_msg("status %d, expected a format error", s);
    assert_null(root);
    const char *msg = graft_errmsg();
    if (!strstr(msg, part)) fail_msg("'%s' not in: %s", part, msg);
    if (strchr(msg, '\n')) fail_msg("message is not one line: %s", msg);
    graft_pickle_free(pk);
}

static void expect_error(const unsigned char *bytes, size_t n, const char *part) {
    expect_error_with(NULL, bytes, n, part);
}

/* ---- output of CPython's pickle.dumps ----------------------------------------------- */

/* {'a': [1, 2.5, None, True], 'b': ('zzz', -300), 'big': 2**70, 'neg': -2**70,
 *  'u': 'café', 't': ()} */
static const char simple_repr[] =
    "{'a': [1, 2.5, None, True], 'b': ('zzz', -300), 'big': 0x400000000000000000, "
    "'neg': -0x400000000000000000, 'u': 'caf\xc3\xa9', 't': ()}";

static void test_cpython_protocol_0_text_opcodes(void **state) {
    (void)state;
    expect_repr(B("(dp0\012Va\012p1\012(lp2\012I1\012aF2.5\012aNaI01\012asVb\012p3\012(Vzzz"
                  "\012p4\012I-300\012tp5\012sVbig\012p6\012L1180591620717411303424L\012sVneg"
                  "\012p7\012L-1180591620717411303424L\012sVu\012p8\012Vcaf\351\012p9\012sVt"
                  "\012p10\012(ts."),
                simple_repr);
}

static void test_cpython_protocol_1(void **state) {
    (void)state;
    expect_repr(B("}q\000(X\001\000\000\000aq\001]q\002(K\001G@\004\000\000\000\000\000\000NI01"
                  "\012eX\001\000\000\000bq\003(X\003\000\000\000zzzq\004J\324\376\377\377tq\005X"
                  "\003\000\000\000bigq\006L1180591620717411303424L\012X\003\000\000\000negq\007L"
                  "-1180591620717411303424L\012X\001\000\000\000uq\010X\005\000\000\000caf\303"
                  "\251q\011X\001\000\000\000tq\012)u."),
                simple_repr);
}

static void test_cpython_protocol_2(void **state) {
    (void)state;
    expect_repr(B("\200\002}q\000(X\001\000\000\000aq\001]q\002(K\001G@\004\000\000\000\000\000"
                  "\000N\210eX\001\000\000\000bq\003X\003\000\000\000zzzq\004J\324\376\377\377"
                  "\206q\005X\003\000\000\000bigq\006\212\011\000\000\000\000\000\000\000\000@X"
                  "\003\000\000\000negq\007\212\011\000\000\000\000\000\000\000\000\300X\001\000"
                  "\000\000uq\010X\005\000\000\000caf\303\251q\011X\001\000\000\000tq\012)u."),
                simple_repr);
}

static void test_cpython_protocol_4_with_frame_and_memoize(void **state) {
    (void)state;
    expect_repr(B("\200\004\225^\000\000\000\000\000\000\000}\224(\214\001a\224]\224(K\001G@\004"
                  "\000\000\000\000\000\000N\210e\214\001b\224\214\003zzz\224J\324\376\377\377"
                  "\206\224\214\003big\224\212\011\000\000\000\000\000\000\000\000@\214\003neg"
                  "\224\212\011\000\000\000\000\000\000\000\000\300\214\001u\224\214\005caf\303"
                  "\251\224\214\001t\224)u."),
                simple_repr);
}

/* {'bytes': b'x\x00y', 'set': {7}, 'fs': frozenset([8]), 'ba': bytearray(b'q'),
 *  'long': 'L' * 300} at protocol 5: SHORT_BINBYTES, EMPTY_SET/ADDITEMS, FROZENSET,
 * BYTEARRAY8, BINUNICODE. */
static void test_cpython_protocol_5_sets_bytes_bytearray(void **state) {
    (void)state;
    static const unsigned char head[] =
        "\200\005\225r\001\000\000\000\000\000\000}\224(\214\005bytes\224C\003x\000y\224\214\003"
        "set\224\217\224(K\007\220\214\002fs\224(K\010\221\224\214\002ba\224\226\001\000\000\000"
        "\000\000\000\000q\224\214\004long\224X,\001\000\000";
    unsigned char buf[512];
    size_t n = sizeof head - 1;
    memcpy(buf, head, n);
    memset(buf + n, 'L', 300);
    n += 300;
    memcpy(buf + n, "\224u.", 3);
    n += 3;
    graft_pickle *pk;
    assert_int_equal(graft_pickle_create(NULL, &pk), GRAFT_OK);
    graft_pickle_obj *root;
    assert_int_equal(graft_pickle_load(pk, buf, n, &root, NULL), GRAFT_OK);
    const graft_pickle_obj *lng = graft_pickle_dict_get(root, "long");
    assert_non_null(lng);
    assert_int_equal(lng->kind, GRAFT_PICKLE_STR);
    assert_int_equal(lng->u.s.len, 300);
    char want[512] = "{'bytes': b'x\\x00y', 'set': {7}, 'fs': frozenset({8}), "
                     "'ba': bytearray(b'q'), 'long': '";
    size_t w = strlen(want);
    memset(want + w, 'L', 300);
    strcpy(want + w + 300, "'}");
    char *got = repr_of(root, 3);
    assert_string_equal(got, want);
    free(got);
    got = repr_of(root, 2); /* the set's and frozenset's items are one level too deep */
    assert_non_null(strstr(got, "'set': {...}, 'fs': frozenset({...})"));
    free(got);
    graft_pickle_free(pk);
}

/* ---- scalars ------------------------------------------------------------------------ */

static void test_binint_opcodes_sign_and_width(void **state) {
    (void)state;
    /* PROTO 2, MARK, BININT1 255, BININT2 65535, BININT -2, BININT 2**31-1, TUPLE, STOP */
    expect_repr(B("\x80\x02(K\xffM\xff\xffJ\xfe\xff\xff\xffJ\xff\xff\xff\x7ft."),
                "(255, 65535, -2, 2147483647)");
}

static void test_long1_fits_int64_when_it_can(void **state) {
    (void)state;
    /* LONG1 0 bytes (0), LONG1 ff (-1), LONG1 8 bytes INT64_MIN, LONG1 9 bytes whose top
     * byte only repeats the sign (1) */
    expect_repr(B("\x80\x02(\x8a\x00\x8a\x01\xff\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80"
                  "\x8a\x09\x01\x00\x00\x00\x00\x00\x00\x00\x00t."),
                "(0, -1, -9223372036854775808, 1)");
}

static void test_long_wider_than_int64_is_a_bigint(void **state) {
    (void)state;
    /* torch's legacy magic number, as torch.save pickles it */
    expect_repr(B("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."),
                "0x1950a86a20f9469cfc6c");
    /* LONG4 of 9 bytes: -2**64 */
    expect_repr(B("\x80\x02\x8b\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff."),
                "-0x10000000000000000");
}

static void test_text_int_beyond_int64_is_a_bigint(void **state) {
    (void)state;
    expect_repr(B("I9223372036854775808\n."), "0x8000000000000000");
    expect_repr(B("I-9223372036854775808\n."), "-9223372036854775808");
}

static void test_bigint_wider_than_the_limit_is_refused(void **state) {
    (void)state;
    graft_pickle_limits lim = graft_pickle_default_limits();
    lim.max_bigint_bytes = 9;
    expect_error_with(&lim, B("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."),
                      "LONG1 integer of 10 bytes exceeds the limit of 9");
}

static void test_floats_binary_and_text(void **state) {
    (void)state;
    /* BINFLOAT is big-endian: 0x3ff8000000000000 = 1.5; FLOAT text; then -0.0 */
    expect_repr(B("(G\x3f\xf8\x00\x00\x00\x00\x00\x00" "F-2.25\nF1e-05\nG\x80\x00\x00\x00\x00\x00"
                  "\x00\x00t."),
                "(1.5, -2.25, 1e-05, -0.0)");
}

static void test_strings_bytes_and_protocol_0_escapes(void **state) {
    (void)state;
    /* SHORT_BINUNICODE, BINUNICODE8, SHORT_BINBYTES, BINBYTES, BINBYTES8, SHORT_BINSTRING
     * (bytes), STRING with escapes (bytes), UNICODE with \u escapes */
    expect_repr(B("(\x8c\x02hi\x8d\x01\x00\x00\x00\x00\x00\x00\x00zC\x01\x01"
                  "B\x02\x00\x00\x00" "ab"
                  "\x8e\x00\x00\x00\x00\x00\x00\x00\x00U\x03py2S'a\\n\\x41\\'\\101'\n"
                  "Vx\\u00e9\\U0001F600\nt."),
                "('hi', 'z', b'\\x01', b'ab', b'', b'py2', b'a\\nA\\'A', "
                "'x\xc3\xa9\xf0\x9f\x98\x80')");
}

static void test_invalid_utf8_in_a_str_is_refused(void **state) {
    (void)state;
    expect_error(B("\x80\x03X\x02\x00\x00\x00\xc3\x28."), "BINUNICODE is not valid UTF-8");
    expect_error(B("\x8c\x02\xc0\x80."), "not valid UTF-8"); /* overlong NUL */
}

/* ---- containers, marks, stack ------------------------------------------------------- */

static void test_tuple_opcodes_and_marks(void **state) {
    (void)state;
    /* EMPTY_TUPLE, TUPLE1, TUPLE2, TUPLE3, and MARK ... TUPLE nested in a MARK ... LIST */
    expect_repr(B("\x80\x02(N)K\x01\x85K\x01K\x02\x86K\x01K\x02K\x03\x87(K\x04(K\x05ttl."),
                "[None, (), (1,), (1, 2), (1, 2, 3), (4, (5,))]");
}

static void test_lists_append_and_appends(void **state) {
    (void)state;
    /* MARK LIST on an empty stack: [] (found by fuzzing: the stack was not yet allocated) */
    expect_repr(B("(l."), "[]");
    /* EMPTY_LIST, APPEND 1, MARK 2 3 APPENDS, protocol 0 LIST from a MARK */
    expect_repr(B("]K\x01" "a(K\x02K\x03" "e(K\x09la."), "[1, 2, 3, [9]]");
}

static void test_dicts_keep_insertion_order_and_replace_values(void **state) {
    (void)state;
    /* EMPTY_DICT, MARK 'b' 1 'a' 2 SETITEMS, SETITEM 'b' 3: 'b' keeps its place */
    expect_repr(B("}(\x8c\x01" "bK\x01\x8c\x01" "aK\x02u\x8c\x01" "bK\x03s."), "{'b': 3, 'a': 2}");
    /* protocol 0 DICT from a MARK */
    expect_repr(B("(K\x01K\x02K\x03K\x04" "d."), "{1: 2, 3: 4}");
}

static void test_equal_numbers_are_one_dict_key(void **state) {
    (void)state;
    /* {1: 'x', True: 'y', 1.0: 'z'} is {1: 'z'} in Python */
    expect_repr(B("}(K\x01\x8c\x01x\x88\x8c\x01yG\x3f\xf0\x00\x00\x00\x00\x00\x00\x8c\x01zu."),
                "{1: 'z'}");
}

static void test_tuple_and_frozenset_keys_compare_by_value(void **state) {
    (void)state;
    /* {(1, 'a'): 1, (1, 'a'): 2, frozenset({1,2}): 3, frozenset({2,1}): 4} */
    expect_repr(B("}(K\x01\x8c\x01" "a\x86K\x01K\x01\x8c\x01" "a\x86K\x02(K\x01K\x02\x91K\x03"
                  "(K\x02K\x01\x91K\x04u."),
                "{(1, 'a'): 2, frozenset({1, 2}): 4}");
}

static void test_many_keys_are_all_found(void **state) {
    (void)state;
    /* {0: 0, 1: 1, ..., 199: 199} via one SETITEMS: exercises the table's growth */
    unsigned char buf[2048];
    size_t n = 0;
    buf[n++] = '}';
    buf[n++] = '(';
    for (int i = 0; i < 200; i++) {
        buf[n++] = 'K';
        buf[n++] = (unsigned char)i;
        buf[n++] = 'K';
        buf[n++] = (unsigned char)i;
    }
    buf[n++] = 'u';
    buf[n++] = '.';
    graft_pickle *pk;
    assert_int_equal(graft_pickle_create(NULL, &pk), GRAFT_OK);
    graft_pickle_obj *root;
    assert_int_equal(graft_pickle_load(pk, buf, n, &root, NULL), GRAFT_OK);
    assert_int_equal(root->u.dict.len, 200);
    for (size_t i = 0; i < 200; i++) {
        assert_int_equal(root->u.dict.keys[i]->u.i, (int64_t)i);
        assert_int_equal(root->u.dict.values[i]->u.i, (int64_t)i);
    }
    graft_pickle_free(pk);
}

static void test_unhashable_key_is_refused(void **state) {
    (void)state;
    expect_error(B("}]K\x01s."), "unhashable dict key or set item of type list");
}

static void test_deeply_nested_key_is_refused(void **state) {
    (void)state;
    /* (((...(None,)...),),) 300 levels deep, used as a dict key */
    unsigned char buf[400];
    size_t n = 0;
    buf[n++] = '}';
    buf[n++] = 'N';
    for (int i = 0; i < 300; i++) buf[n++] = 0x85; /* TUPLE1 */
    buf[n++] = 'N';
    buf[n++] = 's';
    buf[n++] = '.';
    expect_error(buf, n, "nested more than 200 levels deep");
}

static void test_pop_dup_and_pop_mark(void **state) {
    (void)state;
    /* K1 DUP TUPLE2 -> (1, 1); MARK K2 K3 POP_MARK; K4 POP; MARK POP (pops the mark) */
    expect_repr(B("K\x01\x32\x86(K\x02K\x03" "1K\x04" "0(0."), "(1, 1)");
}

static void test_stack_underflow_is_refused(void **state) {
    (void)state;
    expect_error(B("\x80\x02."), "stack underflow: STOP");
    expect_error(B("0"), "stack underflow: POP");
    /* APPEND may not reach below the newest MARK */
    expect_error(B("](K\x01" "a."), "stack underflow: APPEND");
    expect_error(B("K\x01\x86."), "stack underflow: TUPLE2");
}

static void test_opcodes_needing_a_mark_fail_without_one(void **state) {
    (void)state;
    expect_error(B("K\x01t."), "TUPLE found no MARK");
    expect_error(B("]K\x01" "e."), "APPENDS found no MARK");
}

static void test_appending_to_a_non_list_is_refused(void **state) {
    (void)state;
    expect_error(B("}K\x01" "a."), "APPEND to a dict");
    expect_error(B("](K\x01K\x02u."), "SETITEMS on a list");
    expect_error(B("}(K\x01u."), "odd number of items");
}

/* ---- memo --------------------------------------------------------------------------- */

static void test_memo_shares_objects(void **state) {
    (void)state;
    /* EMPTY_LIST BINPUT 0, BINGET 0, LONG_BINPUT 70000, LONG_BINGET 70000, TUPLE3 */
    static const unsigned char p[] = "]q\x00h\x00r\x70\x11\x01\x00j\x70\x11\x01\x00\x87.";
    graft_pickle *pk;
    assert_int_equal(graft_pickle_create(NULL, &pk), GRAFT_OK);
    graft_pickle_obj *root;
    assert_int_equal(graft_pickle_load(pk, p, sizeof p - 1, &root, NULL), GRAFT_OK);
    assert_int_equal(root->kind, GRAFT_PICKLE_TUPLE);
    assert_ptr_equal(root->u.seq.items[0], root->u.seq.items[1]);
    assert_ptr_equal(root->u.seq.items[0], root->u.seq.items[2]);
    graft_pickle_free(pk);
}

static void test_memoize_numbers_memo_slots_in_order(void **state) {
    (void)state;
    /* 'a' MEMOIZE (0), 'b' MEMOIZE (1), GET 0 text, BINGET 1, TUPLE 4 items */
    expect_repr(B("(\x8c\x01" "a\x94\x8c\x01" "b\x94g0\nh\x01t."), "('a', 'b', 'a', 'b')");
}

static void test_memo_get_of_an_unset_key_is_refused(void **state) {
    (void)state;
    expect_error(B("N\x94h\x05."), "memo key 5 is not set at byte 2");
}

static void test_memo_index_beyond_the_limit_is_refused(void **state) {
    (void)state;
    expect_error(B("Nr\xff\xff\xff\xff."), "memo index 4294967295 exceeds the limit");
}

static void test_self_referencing_list_is_printed_to_a_depth(void **state) {
    (void)state;
    /* EMPTY_LIST BINPUT 0 BINGET 0 APPEND: a list that contains itself */
    graft_pickle *pk;
    assert_int_equal(graft_pickle_create(NULL, &pk), GRAFT_OK);
    graft_pickle_obj *root;
    assert_int_equal(graft_pickle_load(pk, B("]q\x00h\x00" "a."), &root, NULL), GRAFT_OK);
    assert_ptr_equal(root->u.seq.items[0], root);
    char *got = repr_of(root, 3);
    assert_string_equal(got, "[[[...]]]");
    free(got);
    graft_pickle_free(pk);
}

/* ---- frames ------------------------------------------------------------------------- */

static void test_frames_are_followed(void **state) {
    (void)state;
    /* PROTO 4, FRAME 3 {K 7 STOP}, the whole pickle inside it */
    expect_repr(B("\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x07."), "7");
    /* two frames in a row */
    expect_repr(B("\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00K\x07"
                  "\x95\x02\x00\x00\x00\x00\x00\x00\x00\x85."),
                "(7,)");
}

static void test_frame_longer_than_the_input_is_refused(void **state) {
    (void)state;
    expect_error(B("\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00N."),
                 "truncated: FRAME of 255 bytes");
}

static void test_opcode_crossing_its_frame_end_is_refused(void **state) {
    (void)state;
    /* FRAME 2 holds "J" and one byte of BININT's four */
    expect_error(B("\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00J\x01\x00\x00\x00."),
                 "BININT runs past the end of its frame");
    expect_error(B("\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00N\x95\x01\x00\x00\x00\x00\x00"
                   "\x00\x00."),
                 "FRAME starts before the previous frame ends");
}

/* ---- globals, calls, persistent ids ------------------------------------------------- */

static void test_forbidden_global_is_refused_by_name(void **state) {
    (void)state;
    /* GLOBAL 'posix system' ... REDUCE: refused at the GLOBAL, before any call */
    expect_error(B("\x80\x02\x63posix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02R."),
                 "global 'posix.system' is not allowed at byte 2");
    /* STACK_GLOBAL 'builtins' 'eval' */
    expect_error(B("\x80\x04\x8c\x08\x62uiltins\x94\x8c\x04\x65val\x94\x93."),
                 "global 'builtins.eval' is not allowed");
    /* INST 'os' 'system' (protocol 0) */
    expect_error(B("(S'ls'\nios\nsystem\n."), "global 'os.system' is not allowed");
    /* a near miss of an allowed name */
    expect_error(B("\x63torch\nFloatStorageX\n."), "global 'torch.FloatStorageX' is not allowed");
}

static void test_forbidden_global_name_is_shown_safely(void **state) {
    (void)state;
    expect_error(B("\x63\x65vil\x01\nna\x1bme\n."), "global 'evil?.na?me' is not allowed");
}

static void test_ordered_dict_reduce_becomes_a_dict_with_build_state(void **state) {
    (void)state;
    /* collections.OrderedDict() REDUCE, SETITEMS, then BUILD {'_metadata': {}} as
     * torch's state_dict() pickles */
    expect_repr(B("\x80\x02\x63\x63ollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00wK\x01"
                  "u}X\x09\x00\x00\x00_metadata}sb."),
                "{'w': 1}.__setstate__({'_metadata': {}})");
}

static void test_allowed_global_reduce_records_a_call(void **state) {
    (void)state;
    /* _rebuild_tensor_v2(persid(('storage', FloatStorage, '0', 'cpu', 6)), 0, (2, 3),
     * (3, 1), False, OrderedDict()) */
    expect_repr(B("\x80\x02\x63torch._utils\n_rebuild_tensor_v2\n("
                  "(X\x07\x00\x00\x00storage\x63torch\nFloatStorage\nX\x01\x00\x00\x00" "0"
                  "X\x03\x00\x00\x00\x63puK\x06tQ"
                  "K\x00K\x02K\x03\x86K\x03K\x01\x86\x89\x63\x63ollections\nOrderedDict\n)RtR."),
                "torch._utils._rebuild_tensor_v2(persid(('storage', torch.FloatStorage, '0', "
                "'cpu', 6)), 0, (2, 3), (3, 1), False, {})");
}

static void test_newobj_and_numpy_reconstruct_record_calls(void **state) {
    (void)state;
    /* numpy.dtype NEWOBJ ('u1', False, True), then BUILD (3, '|') */
    expect_repr(B("\x80\x02\x63numpy\ndtype\n\x8c\x02u1\x89\x88\x87\x81K\x03\x8c\x01|\x86\x62."),
                "numpy.dtype('u1', False, True).__setstate__((3, '|'))");
    /* numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') */
    expect_repr(B("\x80\x02\x63numpy.core.multiarray\n_reconstruct\n\x63numpy\nndarray\n"
                  "K\x00\x85\x43\x01\x62\x87R."),
                "numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')");
    /* NEWOBJ_EX with keyword arguments */
    expect_repr(B("\x80\x04\x63numpy\ndtype\n)}\x8c\x01kK\x01s\x92."),
                "numpy.dtype(**{'k': 1})");
}

static void test_reduce_of_a_non_global_is_refused(void **state) {
    (void)state;
    expect_error(B("N)R."), "REDUCE calls a NoneType, not a global");
    expect_error(B("\x63numpy\ndtype\nNR."), "REDUCE arguments are a NoneType, not a tuple");
}

static void test_persistent_ids_are_handed_back(void **state) {
    (void)state;
    /* BINPERSID of a tuple, and text PERSID */
    static const unsigned char p[] = "(\x8c\x01\x61K\x01\x86QPkey9\nt.";
    graft_pickle *pk;
    assert_int_equal(graft_pickle_create(NULL, &pk), GRAFT_OK);
    graft_pickle_obj *root;
    assert_int_equal(graft_pickle_load(pk, p, sizeof p - 1, &root, NULL), GRAFT_OK);
    assert_int_equal(graft_pickle_persid_count(pk), 2);
    assert_ptr_equal(graft_pickle_persid(pk, 0), root->u.seq.items[0]);
    char *got = repr_of(root, 10);
    assert_string_equal(got, "(persid(('a', 1)), persid('key9'))");
    free(got);
    graft_pickle_free(pk);
}

/* ---- malformed input ---------------------------------------------------------------- */

static void test_unknown_opcode_is_refused(void **state) {
    (void)state;
    expect_error(B("\x80\x02\xff."), "unknown opcode 0xff at byte 2");
}

static void test_unsupported_protocol_and_opcodes_are_refused(void **state) {
    (void)state;
    expect_error(B("\x80\x06N."), "unsupported pickle protocol 6");
    expect_error(B("\x82\x01."), "opcode EXT1 is not supported");
    expect_error(B("\x80\x05\x97."), "opcode NEXT_BUFFER is not supported");
}

static void test_missing_stop_is_refused(void **state) {
    (void)state;
    expect_error(B("\x80\x02N"), "the pickle ends without STOP");
}

static void test_every_truncation_of_a_pickle_is_refused(void **state) {
    (void)state;
    static const unsigned char p[] =
        "\x80\x04\x95\x33\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01\x61\x94]\x94(K\x01G\x40\x04"
        "\x00\x00\x00\x00\x00\x00N\x88\x65\x8c\x03\x62ig\x94\x8a\x09\x00\x00\x00\x00\x00\x00\x00"
        "\x00\x40\x8c\x01\x62\x94\x43\x02xyu.";
    expect_repr(p, sizeof p - 1, "{'a': [1, 2.5, None, True], 'big': 0x400000000000000000, "
                                 "'b': b'xy'}");
    for (size_t n = 0; n + 1 < sizeof p; n++) {
        graft_pickle *pk;
        assert_int_equal(graft_pickle_create(NULL, &pk), GRAFT_OK);
        graft_pickle_obj *root;
        if (graft_pickle_load(pk, p, n, &root, NULL) != GRAFT_ERR_FORMAT)
            fail_msg("prefix of %zu bytes loaded", n);
        graft_pickle_free(pk);
    }
}

static void test_lengths_beyond_the_input_are_refused_before_allocating(void **state) {
    (void)state;
    expect_error(B("X\xff\xff\xff\xff"), "truncated: BINUNICODE of 4294967295 bytes but 0 remain");
    expect_error(B("\x8e\xff\xff\xff\xff\xff\xff\xff\xff"), "truncated: BINBYTES8 of");
    expect_error(B("\x8b\xff\xff\xff\x7f"), "truncated: LONG4 of 2147483647 bytes");
    expect_error(B("T\xff\xff\xff\xff"), "BINSTRING has a negative length");
    expect_error(B("c\x6fs\nsys"), "truncated: GLOBAL argument has no end of line");
}

/* ---- limits ------------------------------------------------------------------------- */

static void test_stack_limit(void **state) {
    (void)state;
    graft_pickle_limits lim = graft_pickle_default_limits();
    lim.max_stack = 4;
    expect_error_with(&lim, B("NNNNN."), "stack holds more than 4 objects");
}

static void test_mark_limit(void **state) {
    (void)state;
    graft_pickle_limits lim = graft_pickle_default_limits();
    lim.max_marks = 3;
    expect_error_with(&lim, B("(((()."), "more than 3 nested MARKs");
}

static void test_object_limit(void **state) {
    (void)state;
    graft_pickle_limits lim = graft_pickle_default_limits();
    lim.max_objects = 3;
    expect_error_with(&lim, B("]NaNaNa."), "more than 3 objects");
}

static void test_byte_limit(void **state) {
    (void)state;
    graft_pickle_limits lim = graft_pickle_default_limits();
    lim.max_bytes = 1000;
    unsigned char buf[2100] = "B\x00\x08\x00\x00"; /* BINBYTES of 2048 bytes */
    buf[2053] = '.';
    expect_error_with(&lim, buf, 2054, "objects need more than the limit of 1000 bytes");
}

static void test_memo_limit(void **state) {
    (void)state;
    graft_pickle_limits lim = graft_pickle_default_limits();
    lim.max_memo = 10;
    expect_error_with(&lim, B("Nq\x0a."), "memo index 10 exceeds the limit of 10");
}

/* ---- several pickles in a row ------------------------------------------------------- */

static void test_consumed_bytes_let_pickles_be_read_in_turn(void **state) {
    (void)state;
    static const unsigned char p[] = "\x80\x02K\x01.\x80\x02]q\x00h\x00\x85.";
    graft_pickle *pk;
    assert_int_equal(graft_pickle_create(NULL, &pk), GRAFT_OK);
    graft_pickle_obj *a, *b;
    size_t used;
    assert_int_equal(graft_pickle_load(pk, p, sizeof p - 1, &a, &used), GRAFT_OK);
    assert_int_equal(used, 5);
    /* the memo starts empty again: GET 0 in the second pickle is its own list */
    assert_int_equal(graft_pickle_load(pk, p + used, sizeof p - 1 - used, &b, &used), GRAFT_OK);
    assert_int_equal(used, sizeof p - 1 - 5);
    assert_int_equal(a->u.i, 1); /* objects of the first load stay valid */
    char *got = repr_of(b, 5);
    assert_string_equal(got, "([],)");
    free(got);
    graft_pickle_free(pk);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpython_protocol_0_text_opcodes),
        cmocka_unit_test(test_cpython_protocol_1),
        cmocka_unit_test(test_cpython_protocol_2),
        cmocka_unit_test(test_cpython_protocol_4_with_frame_and_memoize),
        cmocka_unit_test(test_cpython_protocol_5_sets_bytes_bytearray),
        cmocka_unit_test(test_binint_opcodes_sign_and_width),
        cmocka_unit_test(test_long1_fits_int64_when_it_can),
        cmocka_unit_test(test_long_wider_than_int64_is_a_bigint),
        cmocka_unit_test(test_text_int_beyond_int64_is_a_bigint),
        cmocka_unit_test(test_bigint_wider_than_the_limit_is_refused),
        cmocka_unit_test(test_floats_binary_and_text),
        cmocka_unit_test(test_strings_bytes_and_protocol_0_escapes),
        cmocka_unit_test(test_invalid_utf8_in_a_str_is_refused),
        cmocka_unit_test(test_tuple_opcodes_and_marks),
        cmocka_unit_test(test_lists_append_and_appends),
        cmocka_unit_test(test_dicts_keep_insertion_order_and_replace_values),
        cmocka_unit_test(test_equal_numbers_are_one_dict_key),
        cmocka_unit_test(test_tuple_and_frozenset_keys_compare_by_value),
        cmocka_unit_test(test_many_keys_are_all_found),
        cmocka_unit_test(test_unhashable_key_is_refused),
        cmocka_unit_test(test_deeply_nested_key_is_refused),
        cmocka_unit_test(test_pop_dup_and_pop_mark),
        cmocka_unit_test(test_stack_underflow_is_refused),
        cmocka_unit_test(test_opcodes_needing_a_mark_fail_without_one),
        cmocka_unit_test(test_appending_to_a_non_list_is_refused),
        cmocka_unit_test(test_memo_shares_objects),
        cmocka_unit_test(test_memoize_numbers_memo_slots_in_order),
        cmocka_unit_test(test_memo_get_of_an_unset_key_is_refused),
        cmocka_unit_test(test_memo_index_beyond_the_limit_is_refused),
        cmocka_unit_test(test_self_referencing_list_is_printed_to_a_depth),
        cmocka_unit_test(test_frames_are_followed),
        cmocka_unit_test(test_frame_longer_than_the_input_is_refused),
        cmocka_unit_test(test_opcode_crossing_its_frame_end_is_refused),
        cmocka_unit_test(test_forbidden_global_is_refused_by_name),
        cmocka_unit_test(test_forbidden_global_name_is_shown_safely),
        cmocka_unit_test(test_ordered_dict_reduce_becomes_a_dict_with_build_state),
        cmocka_unit_test(test_allowed_global_reduce_records_a_call),
        cmocka_unit_test(test_newobj_and_numpy_reconstruct_record_calls),
        cmocka_unit_test(test_reduce_of_a_non_global_is_refused),
        cmocka_unit_test(test_persistent_ids_are_handed_back),
        cmocka_unit_test(test_unknown_opcode_is_refused),
        cmocka_unit_test(test_unsupported_protocol_and_opcodes_are_refused),
        cmocka_unit_test(test_missing_stop_is_refused),
        cmocka_unit_test(test_every_truncation_of_a_pickle_is_refused),
        cmocka_unit_test(test_lengths_beyond_the_input_are_refused_before_allocating),
        cmocka_unit_test(test_stack_limit),
        cmocka_unit_test(test_mark_limit),
        cmocka_unit_test(test_object_limit),
        cmocka_unit_test(test_byte_limit),
        cmocka_unit_test(test_memo_limit),
        cmocka_unit_test(test_consumed_bytes_let_pickles_be_read_in_turn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
