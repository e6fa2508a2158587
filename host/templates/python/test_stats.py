import unittest

import stats


class CountTest(unittest.TestCase):
    def test_counts_lines_and_words(self):
        self.assertEqual(stats.count("one two\nthree\n"), (2, 3))
        self.assertEqual(stats.count(""), (0, 0))


if __name__ == "__main__":
    unittest.main()
