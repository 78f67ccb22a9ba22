// The Kotlin bindings on the JVM (JNA + kotlinx-coroutines) against the built
// Linux library and the real backbone: the flow an Android app goes through.
//
//   java ... RecommenderTestKt <model.gguf> <bundle dir> <scratch dir>
//   java ... RecommenderTestKt exit-with-live-objects <model.gguf> <bundle dir> <store dir>
//
// scripts/test-bindings compiles and runs it; it prints "N passed, N failed".
// The second form opens, makes async calls and lets the JVM exit with the
// Recommender alive; the script runs it 50 times and counts the aborts.

import dev.l2rec.*
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.concurrent.CopyOnWriteArrayList
import kotlin.system.exitProcess
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking

private var passed = 0
private var failed = 0

private fun test(name: String, body: suspend () -> Unit) {
    val started = System.nanoTime()
    try {
        runBlocking { body() }
        passed++
        println("PASS $name (${(System.nanoTime() - started) / 1_000_000} ms)")
    } catch (e: Throwable) {
        failed++
        println("FAIL $name: $e")
        e.printStackTrace(System.out)
    }
}

private fun expect(condition: Boolean, message: () -> String) {
    if (!condition) throw AssertionError(message())
}

private suspend inline fun <reified E : Throwable> expectThrows(crossinline block: suspend () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw AssertionError("expected ${E::class.simpleName}, got $e", e)
    }
    throw AssertionError("expected ${E::class.simpleName}, nothing was thrown")
}

private class Recorder(private val onFirst: (() -> Unit)? = null) : ProgressListener {
    val calls = CopyOnWriteArrayList<Pair<ULong, ULong>>()
    val threads = CopyOnWriteArrayList<Long>()

    override fun onProgress(done: ULong, total: ULong) {
        calls.add(done to total)
        threads.add(Thread.currentThread().id)
        if (calls.size == 1) onFirst?.invoke()
    }
}

private fun floats(bytes: ByteArray): FloatArray {
    val buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
    return FloatArray(buffer.remaining()).also { buffer.get(it) }
}

/** Opens, makes async calls, and returns with the Recommender alive. */
private fun exitWithLiveObjects(model: String, bundle: String, store: String) = runBlocking {
    val config = RecommenderConfig(modelPath = model, bundleDir = bundle, storePath = store, threads = 1u)
    val rec = Recommender.open(config)
    rec.observe("u", Event(itemId = "1", timestampMs = 1L, kind = "view"))
    rec.recommend("u", 3u)
    rec.stats()
    Unit
}

fun main(args: Array<String>) {
    if (args.size == 4 && args[0] == "exit-with-live-objects") {
        exitWithLiveObjects(args[1], args[2], args[3])
        return
    }
    require(args.size == 3) { "usage: RecommenderTestKt <model.gguf> <bundle dir> <scratch dir>" }
    val (model, bundle, scratch) = args
    var stores = 0
    fun config(
        bundleDir: String = bundle,
        modelPath: String = model,
        masterKey: ByteArray? = null,
    ) = RecommenderConfig(
        modelPath = modelPath,
        bundleDir = bundleDir,
        storePath = File(scratch, "store-${stores++}").path,
        masterKey = masterKey,
        threads = 1u,
    )

    lateinit var rec: Recommender
    val watch: suspend (String, List<String>) -> Unit = { user, items ->
        items.forEachIndexed { i, item ->
            rec.observe(user, Event(itemId = item, timestampMs = 1_000L + i, kind = "watch"))
        }
    }

    test("open reports progress off the caller's thread") {
        val progress = Recorder()
        rec = Recommender.open(config(), progress = progress)
        val (done, total) = progress.calls.last()
        expect(done == total && total == 40uL) { "last progress ${progress.calls.last()}" }
        expect(Thread.currentThread().id !in progress.threads) { "progress on the caller's thread" }
        val stats = rec.stats()
        expect(stats.catalogItems == 40uL && stats.coldItems == 0uL && !stats.storeEncrypted) { "$stats" }
    }

    test("observe, recommend, explain") {
        val history = listOf("1", "2", "7", "11")
        watch("alice", history)
        val recs = rec.recommend("alice", 10u)
        expect(recs.size == 10) { "${recs.size} recommendations" }
        expect(recs.none { it.itemId in history }) { "history not excluded: $recs" }
        expect(recs.zipWithNext().all { (a, b) -> a.score >= b.score }) { "not sorted: $recs" }
        val all = rec.recommend("alice", 40u, RecommendOptions(includeHistory = true))
        expect(all.map { it.itemId }.containsAll(history)) { "includeHistory: $all" }

        val why = rec.explain("alice")
        expect(why.views.map { it.view }.toSet() == setOf(HistoryView.BEHAVIORAL, HistoryView.SEMANTIC)) { "$why" }
        expect(Math.abs(why.views.sumOf { it.weight.toDouble() } - 1.0) < 1e-4) { "weights $why" }
        expect(why.reasons.isNotEmpty() && why.reasons.all { history.containsAll(it.because) }) { "$why" }
    }

    test("cold items: upsert with progress, events with text, unknown items refused") {
        val progress = Recorder()
        rec.upsertItems(listOf(Item("new-1", "Arrival (2016)"), Item("new-2", "Paddington 2 (2017)")), progress)
        expect(progress.calls.last() == (2uL to 2uL)) { "${progress.calls}" }
        rec.observe("carol", Event("new-3", 1L, "watch", itemText = "Dune (2021)"))
        val stats = rec.stats()
        expect(stats.coldItems == 3uL) { "$stats" }
        expectThrows<L2recException.UnknownItem> { rec.observe("carol", Event("never-seen", 2L, "watch")) }
    }

    test("personalize, export as bytes, forget") {
        val history = listOf("1", "3", "5", "7", "9", "11", "13", "15")
        watch("dave", history)
        rec.recommend("dave", 5u)
        val progress = Recorder()
        val report = rec.personalize("dave", progress = progress)
        expect(report.backbonePasses == 2uL && report.upperPasses == 8uL && report.gradientNorm > 0f) { "$report" }
        expect(report.trainLossAfter <= report.trainLossBefore) { "$report" }
        val (done, total) = progress.calls.last()
        expect(done == total) { "${progress.calls}" }

        val exported = rec.exportUser("dave")
        expect(exported.events.map { it.itemId } == history) { "${exported.events}" }
        expect(exported.viewStates.isNotEmpty()) { "no view states" }
        exported.viewStates.forEach { state ->
            val values = floats(state.state)
            expect(values.size == 640 && values.all { it.isFinite() }) { "state of ${values.size}" }
        }
        expect((exported.phi != null) == report.saved) { "phi ${exported.phi} saved ${report.saved}" }
        exported.phi?.let { expect(floats(it).size == 8) { "phi of ${floats(it).size}" } }
        expect(rec.exportUserJson("dave").contains("\"dave\"")) { "json export" }

        rec.forgetUser("dave")
        val gone = rec.exportUser("dave")
        expect(gone.events.isEmpty() && gone.phi == null) { "$gone" }
    }

    test("concurrent coroutines share one recommender") {
        watch("frank", listOf("2", "4", "6"))
        val results = runBlocking {
            (1..4).map { async { rec.recommend("frank", 3u).map { it.itemId } } }.awaitAll()
        }
        expect(results.toSet().size == 1) { "$results" }
    }

    test("a cancelled handle fails the call with Cancelled") {
        val handle = CancelHandle()
        handle.cancel()
        expectThrows<L2recException.Cancelled> { rec.upsertItems(listOf(Item("c-1", "Heat (1995)")), cancel = handle) }
        expectThrows<L2recException.Cancelled> { rec.recommend("alice", 3u, cancel = handle) }
    }

    test("cancelling the coroutine stops personalize") {
        watch("hank", listOf("1", "2", "3", "4", "5", "6"))
        val started = CompletableDeferred<Unit>()
        val progress = Recorder { started.complete(Unit) }
        runBlocking {
            val job = launch { rec.personalize("hank", progress = progress) }
            started.await()
            job.cancel()
            job.join()
            expect(job.isCancelled) { "the job was not cancelled" }
        }
        System.gc() // frees the abandoned Rust future, which cancels its token
        expect(rec.recommend("hank", 3u).size == 3) { "recommend after a cancel" }
        expect(progress.calls.size < 12) { "personalize ran on: ${progress.calls.size} passes" }
        expect(rec.exportUser("hank").phi == null) { "phi saved by a cancelled personalize" }
    }

    test("bad arguments are InvalidArgument") {
        expectThrows<L2recException.InvalidArgument> { rec.recommend("alice", 0u) }
        expectThrows<L2recException.InvalidArgument> { rec.recommend("", 3u) }
        expectThrows<L2recException.InvalidArgument> { rec.forgetUser("") }
        val e = expectThrows<L2recException.InvalidArgument> {
            Recommender.open(config(masterKey = ByteArray(5)))
        }
        expect("32 bytes" in (e.message ?: "")) { "${e.message}" }
    }

    test("a corrupt bundle is Bundle, a bad model is Backbone") {
        val corrupt = File(scratch, "corrupt-bundle")
        File(bundle).copyRecursively(corrupt, overwrite = true)
        val items = File(corrupt, "items.safetensors")
        val bytes = items.readBytes()
        bytes[bytes.size - 1] = (bytes[bytes.size - 1].toInt() xor 0xFF).toByte()
        items.writeBytes(bytes)
        val e = expectThrows<L2recException.Bundle> { Recommender.open(config(bundleDir = corrupt.path)) }
        expect("sha256" in (e.message ?: "")) { "${e.message}" }
        expectThrows<L2recException.Backbone> {
            Recommender.open(config(modelPath = File(scratch, "missing.gguf").path))
        }
        // Every SDK error is an L2recException.
        expectThrows<L2recException> { Recommender.open(config(bundleDir = File(scratch, "nowhere").path)) }
    }

    test("a second recommender on the same store is StoreLocked") {
        val path = File(scratch, "store-shared").path
        val first = Recommender.open(config().copy(storePath = path))
        try {
            expectThrows<L2recException.StoreLocked> { Recommender.open(config().copy(storePath = path)) }
        } finally {
            first.close()
        }
    }

    rec.close()
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
