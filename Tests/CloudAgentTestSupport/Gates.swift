import Foundation
import Testing

/// How many tests of one kind run at once. The suite runs in parallel (`swift test`), and most
/// of it — the pure core, the reducers, the protocol, the parsers — runs unbounded. A few kinds
/// of test hold something scarce on a small machine: a real control plane with real runtime
/// processes in bubblewrap, a database in the shared PostgreSQL cluster, a real agent CLI.
/// Each such test holds a permit of its kind's gate while it runs, so that two cores are
/// shared by a few of them at a time, not by a hundred, and their deadlines (a stop within
/// 1 s of its deadline) keep their meaning. A test that measures real time against a tight
/// bound takes every permit (`.alone`). Waiting for a permit is a suspension, not a thread.
public actor TestGate {
    public let width: Int
    private var inUse = 0
    private var queue: [(weight: Int, first: Bool, continuation: CheckedContinuation<Void, Never>)] = []

    public init(width: Int) { self.width = max(1, width) }

    /// Waits until `weight` permits are free, and takes them: in arrival order, except that a
    /// long test (`first`) goes ahead of the short ones waiting, so that it does not start last
    /// and end the run late.
    public func acquire(_ weight: Int, first: Bool = false) async {
        let weight = min(weight, width)
        if queue.isEmpty, inUse + weight <= width {
            inUse += weight
            return
        }
        await withCheckedContinuation { continuation in
            let position = first ? (queue.firstIndex { !$0.first } ?? queue.endIndex) : queue.endIndex
            queue.insert((weight, first, continuation), at: position)
        }
    }

    public func release(_ weight: Int) {
        inUse -= min(weight, width)
        // First come, first served: a wide waiter at the head is not overtaken by narrow ones.
        while let head = queue.first, inUse + head.weight <= width {
            queue.removeFirst()
            inUse += head.weight
            head.continuation.resume()
        }
    }

    /// Runs `body` holding `weight` permits.
    nonisolated(nonsending) public func withPermits<T>(_ weight: Int, first: Bool = false, _ body: () async throws -> T) async rethrows -> T {
        await acquire(weight, first: first)
        do {
            let value = try await body()
            await release(weight)
            return value
        } catch {
            await release(weight)
            throw error
        }
    }

    /// Tests that run real processes: a control plane, runtimes, agents, git, bubblewrap.
    /// `CLOUD_AGENT_TEST_PROCESSES` sets the width; by default two more than the cores (such
    /// tests spend most of their time waiting on their processes).
    public static let processes = TestGate(width: widthSetting("CLOUD_AGENT_TEST_PROCESSES", default: ProcessInfo.processInfo.activeProcessorCount + 2))

    /// Tests that each create a database in the shared throwaway PostgreSQL cluster.
    public static let databases = TestGate(width: widthSetting("CLOUD_AGENT_TEST_DATABASES", default: 4))

    static func widthSetting(_ name: String, default value: Int) -> Int {
        ProcessInfo.processInfo.environment[name].flatMap(Int.init).map { max(1, $0) } ?? max(2, value)
    }
}

/// The trait that makes a test (or every test of a suite) hold permits of a gate while it runs.
public struct GateTrait: TestTrait, SuiteTrait, TestScoping {
    let gate: TestGate
    /// Permits held; `Int.max` for all of them.
    let weight: Int
    let kind: String
    /// A long test: it goes ahead of the short ones waiting for the gate.
    var first = false

    public var isRecursive: Bool { true }

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        // Suites are not gated, only the test cases they run; and a test marked by its suite
        // and by itself holds one set of permits, the widest it is marked with.
        guard testCase != nil, !test.isSuite, !GateTrait.holding.contains(ObjectIdentifier(gate)) else { return try await function() }
        let marks = test.traits.compactMap { $0 as? GateTrait }.filter { $0.gate === gate }
        let chosen = marks.max { ($0.weight, $0.first ? 1 : 0) < ($1.weight, $1.first ? 1 : 0) } ?? self
        guard weight == chosen.weight, first == chosen.first else { return try await function() }
        let asked = ContinuousClock.now
        try await gate.withPermits(weight, first: first) {
            let began = ContinuousClock.now
            GateTrait.log(test, kind: kind, asked: asked, began: nil)
            defer { GateTrait.log(test, kind: kind, asked: asked, began: began) }
            try await GateTrait.$holding.withValue(GateTrait.holding.union([ObjectIdentifier(gate)])) { try await function() }
        }
    }

    /// With `CLOUD_AGENT_TEST_GATE_LOG` set, one line per gated test on stderr: when it got its
    /// permits (seconds since the run began), how long it waited and how long it held them — the
    /// suite's critical path, measured.
    private static func log(_ test: Test, kind: String, asked: ContinuousClock.Instant, began: ContinuousClock.Instant?) {
        guard ProcessInfo.processInfo.environment["CLOUD_AGENT_TEST_GATE_LOG"] != nil else { return }
        guard let began else {
            FileHandle.standardError.write(Data("[gate] \(kind) begins \(test.name)\n".utf8))
            return
        }
        let end = ContinuousClock.now
        func seconds(_ duration: Duration) -> String {
            String(format: "%.1f", Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
        }
        let line = "[gate] \(kind) start=\(seconds(began - runStarted)) waited=\(seconds(began - asked)) held=\(seconds(end - began)) \(test.name)\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    private static let runStarted = ContinuousClock.now

    /// The gates whose permits the current task holds.
    @TaskLocal static var holding: Set<ObjectIdentifier> = []
}

extension Trait where Self == GateTrait {
    /// Runs real processes (a control plane with runtimes, agents, git, bubblewrap): at most a
    /// few such tests at once.
    public static var processes: Self { GateTrait(gate: .processes, weight: 1, kind: "processes") }

    /// Measures real time against a tight bound with real processes: runs while no other test
    /// of real processes runs.
    public static var alone: Self { GateTrait(gate: .processes, weight: .max, kind: "alone") }

    /// A long test of real processes (a minute of fuzzing, a browser session), or a test of a
    /// serialized suite (whose tests come to the gate one after another, and would each wait
    /// behind every short test otherwise): started before the short ones, so that the run does
    /// not wait for it at its end.
    public static var long: Self { GateTrait(gate: .processes, weight: 1, kind: "long", first: true) }

    /// Creates a database in the shared PostgreSQL cluster.
    public static var database: Self { GateTrait(gate: .databases, weight: 1, kind: "database") }
}
