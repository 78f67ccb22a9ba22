import Foundation
import L2Rec
import XCTest

/// `swift test` on a Mac after `mobile/ios/build-xcframework`. The flow test
/// needs the backbone and a bundle:
///   python3 bindings/tests/python/small_bundle.py /tmp/l2rec-bundle "$L2REC_MODEL"
///   L2REC_MODEL=... L2REC_TEST_BUNDLE=/tmp/l2rec-bundle swift test
final class L2RecTests: XCTestCase {
    private func scratch() -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
    }

    func testVersionAndCancelHandle() {
        XCTAssertFalse(version().isEmpty)
        let handle = CancelHandle()
        XCTAssertFalse(handle.isCancelled())
        handle.cancel()
        XCTAssertTrue(handle.isCancelled())
    }

    func testFloatsFromBytes() {
        var bytes = Data()
        for value: Float in [1.0, -2.5] {
            withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
        }
        XCTAssertEqual(bytes.l2recFloats(), [1.0, -2.5])
    }

    func testMissingModelIsABackboneError() async {
        let dir = scratch()
        let config = RecommenderConfig(
            modelPath: dir.appendingPathComponent("missing.gguf").path,
            bundleDir: dir.path,
            storePath: dir.appendingPathComponent("store").path,
            threads: 1
        )
        do {
            _ = try await Recommender.open(config: config)
            XCTFail("opened without a model")
        } catch L2recError.Backbone(let message) {
            XCTAssertTrue(message.contains("missing.gguf"), message)
        } catch {
            XCTFail("unexpected \(error)")
        }
    }

    func testFlowWithTheRealModel() async throws {
        let env = ProcessInfo.processInfo.environment
        guard let model = env["L2REC_MODEL"], let bundle = env["L2REC_TEST_BUNDLE"] else {
            throw XCTSkip("set L2REC_MODEL and L2REC_TEST_BUNDLE")
        }
        final class Progress: ProgressListener, @unchecked Sendable {
            var last: (UInt64, UInt64) = (0, 0)
            func onProgress(done: UInt64, total: UInt64) { last = (done, total) }
        }
        let progress = Progress()
        let config = RecommenderConfig(
            modelPath: model, bundleDir: bundle,
            storePath: scratch().appendingPathComponent("store").path, threads: 1
        )
        let rec = try await Recommender.open(config: config, progress: progress)
        XCTAssertEqual(progress.last.0, progress.last.1)
        for (i, id) in ["1", "2", "7", "11"].enumerated() {
            _ = try await rec.observe(
                user: "alice", event: Event(itemId: id, timestampMs: Int64(i), kind: "watch"))
        }
        let recs = try await rec.recommend(user: "alice", k: 5)
        XCTAssertEqual(recs.count, 5)
        let why = try await rec.explain(user: "alice")
        XCTAssertEqual(why.views.count, 2)
        let exported = try rec.exportUser(user: "alice")
        XCTAssertEqual(exported.events.map(\.itemId), ["1", "2", "7", "11"])
        XCTAssertEqual(exported.viewStates.first?.state.l2recFloats().count, 640)
        do {
            _ = try await rec.recommend(user: "alice", k: 0)
            XCTFail("k = 0 accepted")
        } catch L2recError.InvalidArgument {
        }
        try rec.forgetUser(user: "alice")
    }
}
