// Which listen addresses are loopback, and the warning for plaintext on the others.
#include "server/plaintext_warning.h"

#include <gtest/gtest.h>

#include <string>

namespace dion {
namespace {

TEST(PlaintextWarning, LoopbackAddressesAreRecognised) {
  for (const char* listen :
       {"127.0.0.1:50051", "127.1.2.3:0", "localhost:50051", "LocalHost:1", "[::1]:50051"}) {
    EXPECT_TRUE(IsLoopbackListenAddress(listen)) << listen;
    EXPECT_FALSE(PlaintextWarning(listen, /*tls=*/false).has_value()) << listen;
  }
}

TEST(PlaintextWarning, OtherAddressesAreNotLoopback) {
  for (const char* listen : {"0.0.0.0:50051", "[::]:50051", "10.0.0.7:50051", "dion-ps-0:50051",
                             "128.0.0.1:1", "127.0.0:1", "127.0.0.1.example.com:1",
                             "[::ffff:10.0.0.1]:1", ":50051"}) {
    EXPECT_FALSE(IsLoopbackListenAddress(listen)) << listen;
  }
}

TEST(PlaintextWarning, SaysWhatToSetOnAReachableAddressWithoutTls) {
  const std::optional<std::string> warning = PlaintextWarning("0.0.0.0:50051", /*tls=*/false);
  ASSERT_TRUE(warning.has_value());
  EXPECT_NE(warning->find("0.0.0.0:50051"), std::string::npos) << *warning;
  EXPECT_NE(warning->find("--tls_cert_file"), std::string::npos) << *warning;
  EXPECT_NE(warning->find("--tls_key_file"), std::string::npos) << *warning;
  EXPECT_FALSE(PlaintextWarning("0.0.0.0:50051", /*tls=*/true).has_value());
}

}  // namespace
}  // namespace dion
