/* Password files: mosquitto_passwd's $6$/$7$ formats and `kite passwd`. */
#include "acl/acl.h"
#include "runner.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MOSQUITTO_PASSWD "/usr/bin/mosquitto_passwd"

/* Written by Debian's mosquitto_passwd 2.0.11: alice/secret ($7$, -b -c),
 * bob/pw2 (-H sha512), eve/p1 (interactive, from stdin). */
static const char fixture[] =
	"alice:$7$101$Vy+UjpTyK24TgOlg$VrRrRdUQYskAOmIwxUmXaAdd0Ec9qlfub4FKHVo"
	"nrlLok2FH3R7BoKP+fx3efhMdJpXGOH0aFcLFadj9HLQBKw==\n"
	"bob:$6$Jvp0YqJuFflK/sFK$NSWAOSor2DuDWo92HL3LImZkBvbM73PvC5vx//n6dXEfa"
	"vEPNeOsmGcqGJm8FBFTjArqP1QtEZFgtp/IdSTQUQ==\n"
	"eve:$7$101$L9++G/d0t244BRK8$jtQyat2qUZ9erdjvx5lfDJEFo1lyGYu096hA8lUQb"
	"v5WODnveaXu+0VYJmwzVPid7s5SMLKoFSNg54FVDlXpYw==\n";

static enum passwd_result check(const struct passwd_db *db, const char *user,
				const char *pw)
{
	return passwd_check(db, user, (const uint8_t *)pw, pw ? strlen(pw) : 0);
}

TEST(passwd_mosquitto_2_0_11_fixture_sha512_and_pbkdf2)
{
	char err[256];
	struct passwd_db *db =
		passwd_load_string("fixture", fixture, err, sizeof(err));
	CHECK(db);
	if (!db) {
		fprintf(stderr, "  %s\n", err);
		return;
	}
	CHECK_EQ(passwd_count(db), 3);
	CHECK_EQ(check(db, "alice", "secret"), PASSWD_OK);
	CHECK_EQ(check(db, "alice", "secreT"), PASSWD_BAD_PASSWORD);
	CHECK_EQ(check(db, "alice", ""), PASSWD_BAD_PASSWORD);
	CHECK_EQ(check(db, "alice", NULL), PASSWD_BAD_PASSWORD);
	CHECK_EQ(check(db, "bob", "pw2"), PASSWD_OK);
	CHECK_EQ(check(db, "bob", "pw"), PASSWD_BAD_PASSWORD);
	CHECK_EQ(check(db, "eve", "p1"), PASSWD_OK);
	CHECK_EQ(check(db, "mallory", "secret"), PASSWD_NO_SUCH_USER);
	CHECK_EQ(check(db, NULL, "secret"), PASSWD_NO_SUCH_USER);
	/* MQTT passwords are binary: a NUL inside is part of it. */
	CHECK_EQ(passwd_check(db, "alice", (const uint8_t *)"secret\0x", 8),
		 PASSWD_BAD_PASSWORD);
	passwd_free(db);
}

/* Run argv, stdin from /dev/null; the exit status or -1. */
static int run(char *const argv[])
{
	fflush(stdout); /* or the child's freopen writes our buffer again */
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0) {
		freopen("/dev/null", "r", stdin);
		freopen("/dev/null", "w", stdout);
		execv(argv[0], argv);
		_exit(127);
	}
	int st;
	if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

TEST(passwd_files_written_by_installed_mosquitto_passwd)
{
	if (access(MOSQUITTO_PASSWD, X_OK))
		SKIP("%s not installed (the fixture test covers its format)",
		     MOSQUITTO_PASSWD);
	char dir[] = "/tmp/kite-pw-XXXXXX", path[64];
	CHECK(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/pw", dir);
	char *c1[] = {MOSQUITTO_PASSWD, "-b", "-c", path, "user", "pass", NULL};
	char *c2[] = {MOSQUITTO_PASSWD, "-H", "sha512", "-b", path, "old",
		      "ol:d pw", NULL};
	char *c3[] = {MOSQUITTO_PASSWD, "-b", path, "\xc3\xa9t\xc3\xa9",
		      "\xe2\x82\xac", NULL};
	CHECK_EQ(run(c1), 0);
	CHECK_EQ(run(c2), 0);
	CHECK_EQ(run(c3), 0);
	char err[256];
	struct passwd_db *db = passwd_load(path, err, sizeof(err));
	CHECK(db);
	if (db) {
		CHECK_EQ(check(db, "user", "pass"), PASSWD_OK);
		CHECK_EQ(check(db, "user", "pass "), PASSWD_BAD_PASSWORD);
		CHECK_EQ(check(db, "old", "ol:d pw"), PASSWD_OK);
		CHECK_EQ(check(db, "old", "ol"), PASSWD_BAD_PASSWORD);
		CHECK_EQ(check(db, "\xc3\xa9t\xc3\xa9", "\xe2\x82\xac"),
			 PASSWD_OK);
		CHECK_EQ(check(db, "nobody", "pass"), PASSWD_NO_SUCH_USER);
		passwd_free(db);
	} else {
		fprintf(stderr, "  %s\n", err);
	}
	unlink(path);
	rmdir(dir);
}

/* passwd_main with its prompts and messages sent to /dev/null. */
static int kite_passwd(int argc, const char **argv)
{
	fflush(stdout);
	fflush(stderr);
	int out = dup(1), err = dup(2);
	int null = open("/dev/null", O_WRONLY);
	dup2(null, 1);
	dup2(null, 2);
	int rc = passwd_main(argc, (char **)argv);
	fflush(stdout);
	fflush(stderr);
	dup2(out, 1);
	dup2(err, 2);
	close(out);
	close(err);
	close(null);
	return rc;
}

static struct passwd_db *reload(const char *path)
{
	char err[256];
	struct passwd_db *db = passwd_load(path, err, sizeof(err));
	if (!db)
		fprintf(stderr, "  %s\n", err);
	return db;
}

TEST(passwd_main_create_update_delete_roundtrip)
{
	char dir[] = "/tmp/kite-pw-XXXXXX", path[64];
	CHECK(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/pw", dir);
	const char *c[] = {"passwd", "-c", "-b", path, "u1", "p1"};
	CHECK_EQ(kite_passwd(6, c), 0);
	struct stat st;
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
	const char *add[] = {"passwd", "-b", path, "u2", "p2"};
	CHECK_EQ(kite_passwd(5, add), 0);
	const char *sha[] = {"passwd", "-H", "sha512", "-b", path, "u3", "p3"};
	CHECK_EQ(kite_passwd(7, sha), 0);
	const char *upd[] = {"passwd", "-b", path, "u1", "new"};
	CHECK_EQ(kite_passwd(5, upd), 0);
	struct passwd_db *db = reload(path);
	CHECK(db);
	if (db) {
		CHECK_EQ(passwd_count(db), 3);
		CHECK_EQ(check(db, "u1", "new"), PASSWD_OK);
		CHECK_EQ(check(db, "u1", "p1"), PASSWD_BAD_PASSWORD);
		CHECK_EQ(check(db, "u2", "p2"), PASSWD_OK);
		CHECK_EQ(check(db, "u3", "p3"), PASSWD_OK);
		passwd_free(db);
	}
	FILE *f = fopen(path, "r");
	char line[256];
	CHECK(f && fgets(line, sizeof(line), f));
	CHECK(strncmp(line, "u1:$7$101$", 10) == 0);
	if (f)
		fclose(f);
	const char *del[] = {"passwd", "-D", path, "u2"};
	CHECK_EQ(kite_passwd(4, del), 0);
	CHECK_EQ(kite_passwd(4, del), 1); /* not found any more */
	db = reload(path);
	CHECK(db && passwd_count(db) == 2);
	if (db) {
		CHECK_EQ(check(db, "u2", "p2"), PASSWD_NO_SUCH_USER);
		passwd_free(db);
	}
	const char *bad[] = {"passwd", "-b", path, "a:b", "x"};
	CHECK_EQ(kite_passwd(5, bad), 1);
	const char *cd[] = {"passwd", "-c", "-D", path, "u1"};
	CHECK_EQ(kite_passwd(5, cd), 1);
	const char *missing[] = {"passwd", "-b", path, "u9"};
	CHECK_EQ(kite_passwd(4, missing), 1);
	unlink(path);
	rmdir(dir);
}

TEST(passwd_main_upgrades_plain_text_and_keeps_hashes)
{
	char dir[] = "/tmp/kite-pw-XXXXXX", path[64];
	CHECK(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/pw", dir);
	FILE *f = fopen(path, "w");
	fprintf(f, "# users\ncarol:plain\n\ndave : two words \n%s", fixture);
	fclose(f);
	const char *u[] = {"passwd", "-U", path};
	CHECK_EQ(kite_passwd(3, u), 0);
	struct passwd_db *db = reload(path);
	CHECK(db);
	if (db) {
		CHECK_EQ(passwd_count(db), 5);
		CHECK_EQ(check(db, "carol", "plain"), PASSWD_OK);
		CHECK_EQ(check(db, "dave", "two words"), PASSWD_OK);
		CHECK_EQ(check(db, "alice", "secret"), PASSWD_OK);
		CHECK_EQ(check(db, "bob", "pw2"), PASSWD_OK);
		passwd_free(db);
	}
	struct stat st;
	CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
	unlink(path);
	rmdir(dir);
}

TEST(passwd_main_reads_password_twice_from_stdin)
{
	char dir[] = "/tmp/kite-pw-XXXXXX", path[64];
	CHECK(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/pw", dir);
	FILE *in = tmpfile();
	fputs("s3cret\ns3cret\n", in);
	rewind(in);
	int saved = dup(0);
	dup2(fileno(in), 0);
	clearerr(stdin);
	const char *c[] = {"passwd", "-c", path, "eve"};
	int rc = kite_passwd(4, c);
	/* Mismatch: refused, file untouched. */
	rewind(in);
	fputs("aaa\nbbb\n", in);
	fflush(in);
	rewind(in);
	clearerr(stdin);
	const char *c2[] = {"passwd", path, "eve"};
	int rc2 = kite_passwd(3, c2);
	dup2(saved, 0);
	close(saved);
	clearerr(stdin);
	fclose(in);
	CHECK_EQ(rc, 0);
	CHECK_EQ(rc2, 1);
	struct passwd_db *db = reload(path);
	CHECK(db);
	if (db) {
		CHECK_EQ(check(db, "eve", "s3cret"), PASSWD_OK);
		passwd_free(db);
	}
	unlink(path);
	rmdir(dir);
}

TEST(passwd_load_errors_report_file_and_line)
{
	static const struct {
		const char *text, *err;
	} cases[] = {
		{"# c\nu:plain\n", "pw:2: unknown password hash type"},
		{"u\n", "pw:1: expected USER:HASH"},
		{":$6$x$y\n", "pw:1: empty username"},
		{"u:\n", "pw:1: missing password hash"},
		{"u:$7$0$Vy+UjpTyK24TgOlg$x\n", "pw:1: hash iterations"},
		{"u:$7$abc$Vy+UjpTyK24TgOlg$x\n", "pw:1: invalid hash iter"},
		{"u:$6$short$AAAA\n", "pw:1: invalid password salt"},
		{"u:$6$Vy+UjpTyK24TgOlg$AAAA\n", "pw:1: invalid password hash"},
		{"u:$6$Vy+UjpTyK24TgOlg\n", "pw:1: malformed $6$"},
		{"u:$5$a$b\n", "pw:1: unknown password hash type"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char err[256] = "";
		struct passwd_db *db =
			passwd_load_string("pw", cases[i].text, err, sizeof(err));
		CHECK(!db);
		if (strncmp(err, cases[i].err, strlen(cases[i].err))) {
			fprintf(stderr, "  case %zu: \"%s\"\n", i, err);
			CHECK(0);
		}
		passwd_free(db);
	}
	char text[1024], err[256];
	snprintf(text, sizeof(text), "%s%s", fixture, "bob:$6$x$y\n");
	CHECK(!passwd_load_string("pw", text, err, sizeof(err)));
	CHECK(strstr(err, "pw:4: duplicate user"));
	CHECK(!passwd_load("/nonexistent/pw", err, sizeof(err)));
	CHECK(strstr(err, "/nonexistent/pw: "));
}

/* Thousands of users (the table grows many times): each one found, an
 * unknown one not, a repeat of any one refused with its line. */
TEST(passwd_many_users_each_found_and_repeats_refused)
{
	enum { N = 3000 };
	const char *bob = strstr(fixture, "bob:") + 4; /* password "pw2" */
	size_t hl = (size_t)(strchr(bob, '\n') - bob);
	size_t cap = N * (hl + 16) + 64, n = 0;
	char *text = malloc(cap), err[256];

	for (int i = 0; text && i < N; i++)
		n += (size_t)snprintf(text + n, cap - n, "user%d:%.*s\n", i,
				      (int)hl, bob);
	struct passwd_db *db = passwd_load_string("pw", text, err, sizeof(err));
	CHECK(db);
	if (!db) {
		free(text);
		return;
	}
	CHECK_EQ(passwd_count(db), N);
	int bad = 0;
	for (int i = 0; i < N; i += 7) {
		char user[16];

		snprintf(user, sizeof(user), "user%d", i);
		bad += check(db, user, "pw2") != PASSWD_OK;
	}
	CHECK_EQ(bad, 0);
	CHECK_EQ(check(db, "user3000", "pw2"), PASSWD_NO_SUCH_USER);
	CHECK_EQ(check(db, "user", "pw2"), PASSWD_NO_SUCH_USER);
	passwd_free(db);
	snprintf(text + n, cap - n, "user1234:%.*s\n", (int)hl, bob);
	CHECK(!passwd_load_string("pw", text, err, sizeof(err)));
	CHECK(strstr(err, "pw:3001: duplicate user \"user1234\""));
	free(text);
}
