import CloudAgentCore
import CloudAgentPostgres
import CloudAgentTestSupport
import Foundation
import Testing
#if canImport(Glibc)
    import Glibc
#endif

/// The database goes away while an agent works: the store's downtime is the control plane's
/// downtime, and never counts against the agent.
@Suite("PostgreSQL goes away mid-execution and comes back", .processes)
struct StoreOutageTests {
    @Test(
        "the database stopped (fast shutdown) for 6 s mid-execution, then started: /readyz is 503 in between, the execution completes, every event once, nothing fails as stale, the runtime is not stopped",
        .long)
    func databaseOutage() async throws {
        // A server of its own: the outage must not touch the other tests' databases.
        let postgres = try await ThrowawayPostgres.start(settings: ["fsync=off", "synchronous_commit=off"], name: "cloud-agent-outage")
        defer { postgres.stopDetached() }
        let database = PostgresConfiguration(host: "127.0.0.1", port: postgres.port, username: ThrowawayPostgres.superuser, password: nil, database: "postgres")
        // Stale threshold 3 s and idle timeout 4 s: both shorter than the outage.
        let serve = try await ServeUnderTest(
            store: .sqlite,
            extra: [
                "CLOUD_AGENT_DATABASE_URL": ServeStore.url(database), "CLOUD_AGENT_IDLE_TIMEOUT": "4s",
            ])
        defer { serve.tearDown(part: "store-outage") }
        try await serve.start()
        #expect(try await serve.request("GET", "/readyz").status == 200)

        let id = try await serve.initiate("tick 120 0.05\nsay finished")
        try await serve.waitForTicks(id, atLeast: 10)

        let outageStarted = ContinuousClock.now
        try await postgres.pause()
        // An API call made now waits at most the store's bound (5 s), then answers 503.
        async let during = serve.request("GET", "/v1/sessions/\(id)")
        try await eventually(within: 5, "/readyz to say the database is away") {
            try await serve.request("GET", "/readyz").status == 503
        }
        let unready = ContinuousClock.now - outageStarted
        let api = try await during
        let apiAnswered = ContinuousClock.now - outageStarted
        #expect(api.status == 503 && api.errorCode == "STORE_UNAVAILABLE", "\(api.text)")
        #expect(api["error"]?["retryable"]?.boolValue == true)
        try await Task.sleep(until: outageStarted + .seconds(6))
        try await postgres.resume()
        let resumed = ContinuousClock.now
        try await eventually(within: 20, "/readyz back") { try await serve.request("GET", "/readyz").status == 200 }
        let ready = ContinuousClock.now - resumed

        let session = try await serve.waitForEnd(id, within: 60)
        #expect(session["latestExecution"]?["status"] == "completed", "\(session.text)\n\(serve.diagnostics)")
        #expect(session["runtime"]?["state"] == "running", "no stop was judged from the outage: \(session.text)")
        let list = try await serve.events(id)
        expectEveryEventOnce(list, ticks: 120)
        #expect(list.filter { $0["type"] == "runtime.stopped" }.isEmpty)
        #expect(!(serve.current?.stderr.contains("no heartbeat for") ?? true), "an execution was judged stale: \(serve.diagnostics)")

        // After the outage the rules hold as before: the runtime idles out once, on time.
        try await eventually(within: 20, "the idle stop after the execution") {
            try await serve.request("GET", "/v1/sessions/\(id)")["runtime"]?["state"] == "stopped"
        }
        let stopped = try await serve.events(id).filter { $0["type"] == "runtime.stopped" }
        #expect(stopped.count == 1 && stopped.first?["data"]?["rule"] == "idle", "\(stopped)")
        Reliability.report(
            "store-outage",
            "PostgreSQL away \(resumed - outageStarted) (stale threshold 3 s, idle timeout 4 s): /readyz 503 after \(unready), an API call 503 STORE_UNAVAILABLE after \(apiAnswered); /readyz 200 \(ready) after the restart; the execution completed, \(list.count) events once, no stale failure, one idle stop afterwards"
        )
        try await serve.stop(with: SIGTERM)
    }
}
