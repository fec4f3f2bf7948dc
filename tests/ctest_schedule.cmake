# Read by ctest, not by cmake: tests/CMakeLists.txt appends this file to TEST_INCLUDE_FILES
# after every gtest_discover_tests list, so the GoogleTest cases named here exist by now.
# (ctest ignores a name that no longer exists: a renamed test loses its COST and runs in every
# tree again, it is never skipped.)
#
# COST: `ctest -jN` starts tests in descending COST. A clean clone (CI) has no
# Testing/Temporary/CTestCostData.txt, so without it the long tests start last, in file order,
# and make the tail of the run. Figures: seconds of the slowest tree (ASan for the GoogleTest
# cases) in one full scripts/test.sh run; only their order matters.
set_tests_properties(DionLocalTest.TrainsTheSyntheticTaskAndWritesReportSummaryPlotAndLogs
                     PROPERTIES COST 20)
set_tests_properties(WalFault.EveryAcknowledgedContributionIsAppliedExactlyOnceAcrossTenKills
                     DionLocalTest.InterruptStopsWorkersThenShardsWhichCheckpoint
                     PROPERTIES COST 9)
set_tests_properties(WorkerClient.ReconnectsAfterTheShardIsDownForAFewSeconds
                     WorkerTraining.TwoWorkersLearnTheTeacherTaskThroughTwoShards
                     WorkerClient.GivesUpOnAShardThatRegistersButBreaksEveryPushStream
                     WorkerClient.NeverSendsASequenceTwiceOnOnePushStream
                     FashionMnist.RealFilesHaveTheExpectedSizesAndStatistics
                     DionLocalTest.ReportsAWorkerThatExitsCleanlyBeforeItIsReady
                     ShardTest.BeginShutdownReleasesAPushWaitingForRoomWithoutWaitingForTheBacklog
                     ReplicaCrossCpu.FollowsAHaswellShardOnPrescottFor200Versions
                     ReplicaCrossCpu.FollowsASandyBridgeShardOnHaswellFor200Versions
                     DionLocalTest.ReportsAWorkerBinaryThatExitsAtOnce
                     WorkerClient.ResyncsWhenTheShardRestartsFromAnOlderCheckpoint
                     DionLocalTest.SplitThresholdSplitsAMatrixAndTheSummaryListsItsOwners
                     PROPERTIES COST 3)

# Label `release_only`: scripts/test.sh runs these in the Release tree only (its ASan stage
# passes -LE release_only and prints their names). They are slow under ASan and reach no code
# that the tests which stay in the ASan tree do not reach there:
# - the synthetic training of `dion local` (20 s under ASan, 3.5 s in Release): the same
#   dion-server, dion-worker and `dion` binaries run under ASan in worker_binary_test,
#   server_binary_test and the other DionLocalTest cases (failing, interrupted workers), the
#   report, summary and plot writers in run_report_test, the final cut in
#   coordinated_checkpoint_test;
# - ReplicaCrossCpu (6 s under ASan, 1 s in Release): bit-identical replicas across OpenBLAS
#   kernels, a property of the optimised build; replica_test covers the replica under ASan.
# set_tests_properties replaces LABELS, so each keeps its own label too.
set_tests_properties(DionLocalTest.TrainsTheSyntheticTaskAndWritesReportSummaryPlotAndLogs
                     PROPERTIES LABELS "integration;release_only")
set_tests_properties(ReplicaCrossCpu.FollowsAHaswellShardOnPrescottFor200Versions
                     ReplicaCrossCpu.FollowsASandyBridgeShardOnHaswellFor200Versions
                     PROPERTIES LABELS "unit;release_only")
