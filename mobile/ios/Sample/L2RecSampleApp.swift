// A minimal SwiftUI app on the l2rec SDK: open (with progress), recommend,
// record a watch, personalize, forget. To run it: create an iOS App project in
// Xcode, add mobile/ios as a local package dependency (product L2Rec), replace
// the app's Swift file with this one, and add the backbone
// (gemma-3-270m-q4_k_m.gguf) and a bundle directory named "bundle" (as a
// folder reference) to the app's resources. See docs/INTEGRATION-ios.md.
import L2Rec
import SwiftUI

@main
struct L2RecSampleApp: App {
    var body: some Scene {
        WindowGroup { ContentView() }
    }
}

/// Forwards progress (reported on an SDK worker thread) to a closure.
final class ProgressRelay: ProgressListener, @unchecked Sendable {
    private let handler: @Sendable (UInt64, UInt64) -> Void
    init(_ handler: @escaping @Sendable (UInt64, UInt64) -> Void) { self.handler = handler }
    func onProgress(done: UInt64, total: UInt64) { handler(done, total) }
}

@MainActor
final class RecommenderModel: ObservableObject {
    @Published var status = "Not opened"
    @Published var progress = 0.0
    @Published var recommendations: [Recommendation] = []
    private var recommender: Recommender?
    private let user = "me"

    func open() async {
        guard recommender == nil else { return }
        guard let model = Bundle.main.path(forResource: "gemma-3-270m-q4_k_m", ofType: "gguf"),
              let bundle = Bundle.main.path(forResource: "bundle", ofType: nil)
        else {
            status = "Add the backbone and the bundle to the app's resources"
            return
        }
        do {
            let support = try FileManager.default.url(
                for: .applicationSupportDirectory, in: .userDomainMask,
                appropriateFor: nil, create: true)
            let config = RecommenderConfig(
                modelPath: model,
                bundleDir: bundle,
                storePath: support.appendingPathComponent("l2rec-store").path,
                masterKey: try MasterKey.loadOrCreate())
            status = "Opening…"
            let relay = ProgressRelay { done, total in
                Task { @MainActor in self.progress = Double(done) / Double(max(total, 1)) }
            }
            recommender = try await Recommender.open(config: config, progress: relay)
            status = "Ready"
            await refresh()
        } catch {
            status = "Open failed: \(error.localizedDescription)"
        }
    }

    func refresh() async {
        guard let recommender else { return }
        do {
            recommendations = try await recommender.recommend(user: user, k: 10)
        } catch {
            status = "\(error.localizedDescription)"
        }
    }

    func watched(_ item: Recommendation) async {
        guard let recommender else { return }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        do {
            _ = try await recommender.observe(
                user: user, event: Event(itemId: item.itemId, timestampMs: now, kind: "watch"))
            await refresh()
        } catch {
            status = "\(error.localizedDescription)"
        }
    }

    func personalize() async {
        guard let recommender else { return }
        do {
            let report = try await recommender.personalize(user: user)
            status = report.reason
            await refresh()
        } catch {
            status = "\(error.localizedDescription)"
        }
    }

    func forget() async {
        guard let recommender else { return }
        do {
            try recommender.forgetUser(user: user)
            status = "Forgotten"
            await refresh()
        } catch {
            status = "\(error.localizedDescription)"
        }
    }
}

struct ContentView: View {
    @StateObject private var model = RecommenderModel()

    var body: some View {
        NavigationStack {
            List {
                Section {
                    Text(model.status)
                    if model.progress > 0 && model.progress < 1 {
                        ProgressView(value: model.progress)
                    }
                }
                Section("Recommended for you") {
                    ForEach(model.recommendations, id: \.itemId) { item in
                        Button(item.text) { Task { await model.watched(item) } }
                    }
                }
            }
            .navigationTitle("l2rec")
            .toolbar {
                Button("Personalize") { Task { await model.personalize() } }
                Button("Forget me") { Task { await model.forget() } }
            }
            .task { await model.open() }
        }
    }
}
