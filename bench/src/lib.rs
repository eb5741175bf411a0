//! bench: testclient and cutover.
