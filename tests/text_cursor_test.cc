// TextCursor: each Consume* moves past exactly what it matched, and a failed one leaves the
// position where it was (the parsers cite pos() in their error messages).
#include "server/checkpoint/text_cursor.h"

#include <optional>

#include "gtest/gtest.h"

namespace dion {
namespace {

TEST(TextCursorTest, ConsumeMovesOnlyOnAMatch) {
  TextCursor in("ab");
  EXPECT_FALSE(in.Consume('b'));
  EXPECT_EQ(in.pos(), 0u);
  EXPECT_TRUE(in.Consume('a'));
  EXPECT_EQ(in.pos(), 1u);
  EXPECT_EQ(in.Peek(), 'b');
  EXPECT_EQ(in.Next(), 'b');
  EXPECT_TRUE(in.AtEnd());
  EXPECT_FALSE(in.Consume('b'));
  EXPECT_EQ(in.pos(), 2u);
}

TEST(TextCursorTest, ConsumeLiteralNeedsTheWholeLiteral) {
  TextCursor in("Tru");
  EXPECT_FALSE(in.Consume("True"));
  EXPECT_EQ(in.pos(), 0u);
  EXPECT_EQ(in.remaining(), 3u);
  EXPECT_TRUE(in.Consume("Tr"));
  EXPECT_EQ(in.remaining(), 1u);
}

TEST(TextCursorTest, TokensSkipWhitespaceFirstAndPlainConsumeDoesNot) {
  TextCursor in("  \t{ x");
  EXPECT_FALSE(in.Consume('{'));
  EXPECT_EQ(in.pos(), 0u);
  EXPECT_TRUE(in.ConsumeToken('{'));
  EXPECT_EQ(in.pos(), 4u);
  EXPECT_FALSE(in.ConsumeToken("y"));
  EXPECT_EQ(in.pos(), 5u);  // the whitespace stays skipped
  EXPECT_TRUE(in.ConsumeToken("x"));
  EXPECT_TRUE(in.AtEnd());
}

TEST(TextCursorTest, WhitespaceSetIsTheCallers) {
  TextCursor python("\v\f x");
  python.SkipSpace();
  EXPECT_EQ(python.pos(), 3u);
  TextCursor json("\v x", TextCursor::kJsonSpace);  // \v is not JSON whitespace
  json.SkipSpace();
  EXPECT_EQ(json.pos(), 0u);
  TextCursor json_space(" \t\r\n]", TextCursor::kJsonSpace);
  EXPECT_TRUE(json_space.ConsumeToken(']'));
}

TEST(TextCursorTest, ConsumeDigitsTakesTheLongestRun) {
  TextCursor in("0123x9");
  EXPECT_EQ(in.ConsumeDigits(), "0123");
  EXPECT_EQ(in.ConsumeDigits(), "");
  EXPECT_EQ(in.pos(), 4u);
  EXPECT_TRUE(in.Consume('x'));
  EXPECT_EQ(in.ConsumeDigits(), "9");
  EXPECT_TRUE(in.AtEnd());
}

TEST(TextCursorTest, ConsumeRawQuotedReadsMatchingQuotes) {
  TextCursor in(R"('<f4' "a'b" 'x")");
  EXPECT_EQ(in.ConsumeRawQuoted("'\""), std::optional<absl::string_view>("<f4"));
  EXPECT_EQ(in.pos(), 5u);
  in.SkipSpace();
  EXPECT_EQ(in.ConsumeRawQuoted("'\""), std::optional<absl::string_view>("a'b"));
  in.SkipSpace();
  const size_t before = in.pos();
  EXPECT_EQ(in.ConsumeRawQuoted("'\""), std::nullopt);  // 'x" never closes
  EXPECT_EQ(in.pos(), before);
}

TEST(TextCursorTest, ConsumeRawQuotedRefusesBackslashesAndOtherQuotes) {
  TextCursor escaped(R"('a\'b')");
  EXPECT_EQ(escaped.ConsumeRawQuoted("'"), std::nullopt);
  EXPECT_EQ(escaped.pos(), 0u);
  TextCursor double_quoted(R"("a")");
  EXPECT_EQ(double_quoted.ConsumeRawQuoted("'"), std::nullopt);
  EXPECT_EQ(double_quoted.pos(), 0u);
  TextCursor empty("''");
  EXPECT_EQ(empty.ConsumeRawQuoted("'"), std::optional<absl::string_view>(""));
  EXPECT_TRUE(empty.AtEnd());
  TextCursor at_end("");
  EXPECT_EQ(at_end.ConsumeRawQuoted("'"), std::nullopt);
}

}  // namespace
}  // namespace dion
