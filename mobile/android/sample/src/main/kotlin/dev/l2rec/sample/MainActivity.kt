// A minimal Compose app on the l2rec SDK: open (with progress), recommend,
// record a watch, personalize, forget. The backbone and a bundle are pushed
// to the app's external files directory for the sample (an app downloads them
// or ships them as an asset pack, see docs/INTEGRATION-android.md):
//   adb push gemma-3-270m-q4_k_m.gguf /sdcard/Android/data/dev.l2rec.sample/files/
//   adb push bundle /sdcard/Android/data/dev.l2rec.sample/files/
package dev.l2rec.sample

import android.app.Application
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.compose.foundation.clickable
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.material3.Button
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableFloatStateOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import androidx.lifecycle.viewmodel.compose.viewModel
import dev.l2rec.Event
import dev.l2rec.L2recException
import dev.l2rec.ProgressListener
import dev.l2rec.Recommendation
import dev.l2rec.Recommender
import dev.l2rec.RecommenderConfig
import dev.l2rec.android.MasterKeyStore
import java.io.File
import kotlinx.coroutines.launch

class RecommenderViewModel(application: Application) : AndroidViewModel(application) {
    var status by mutableStateOf("Not opened")
        private set
    var progress by mutableFloatStateOf(0f)
        private set
    var recommendations by mutableStateOf(emptyList<Recommendation>())
        private set
    private var recommender: Recommender? = null
    private val user = "me"

    init {
        viewModelScope.launch { open() }
    }

    private suspend fun open() {
        val app = getApplication<Application>()
        val files = app.getExternalFilesDir(null) ?: app.filesDir
        val model = File(files, "gemma-3-270m-q4_k_m.gguf")
        val bundle = File(files, "bundle")
        if (!model.exists() || !bundle.isDirectory) {
            status = "Push the backbone and the bundle to $files"
            return
        }
        status = "Opening…"
        try {
            val config = RecommenderConfig(
                modelPath = model.path,
                bundleDir = bundle.path,
                // App-private and excluded from backups, like the key.
                storePath = File(app.noBackupFilesDir, "l2rec-store").path,
                masterKey = MasterKeyStore.loadOrCreate(app),
            )
            // Called on an SDK worker thread; Compose state is thread-safe to write.
            val listener = object : ProgressListener {
                override fun onProgress(done: ULong, total: ULong) {
                    progress = done.toFloat() / maxOf(total, 1uL).toFloat()
                }
            }
            recommender = Recommender.open(config, progress = listener)
            status = "Ready"
            refresh()
        } catch (e: L2recException) {
            status = "Open failed: ${e.message}"
        }
    }

    private fun launchWith(action: suspend (Recommender) -> Unit) {
        val recommender = recommender ?: return
        viewModelScope.launch {
            try {
                action(recommender)
            } catch (e: L2recException) {
                status = e.message ?: e.toString()
            }
        }
    }

    private suspend fun refresh() {
        recommendations = recommender?.recommend(user, 10u) ?: emptyList()
    }

    fun watched(item: Recommendation) = launchWith {
        it.observe(user, Event(itemId = item.itemId, timestampMs = System.currentTimeMillis(), kind = "watch"))
        refresh()
    }

    fun personalize() = launchWith {
        status = it.personalize(user).reason
        refresh()
    }

    fun forget() = launchWith {
        it.forgetUser(user)
        status = "Forgotten"
        refresh()
    }

    override fun onCleared() {
        recommender?.close() // closes the store; pending calls keep it alive until they end
    }
}

class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent { MaterialTheme { Screen() } }
    }
}

@Composable
fun Screen(model: RecommenderViewModel = viewModel()) {
    Column(Modifier.padding(16.dp)) {
        Text(model.status)
        if (model.progress > 0f && model.progress < 1f) {
            LinearProgressIndicator(progress = { model.progress }, modifier = Modifier.fillMaxWidth())
        }
        Row {
            Button(onClick = model::personalize, modifier = Modifier.padding(end = 8.dp)) { Text("Personalize") }
            Button(onClick = model::forget) { Text("Forget me") }
        }
        Text("Recommended for you", style = MaterialTheme.typography.titleMedium)
        LazyColumn {
            items(model.recommendations, key = { it.itemId }) { item ->
                Text(
                    item.text,
                    Modifier.fillMaxWidth().clickable { model.watched(item) }.padding(vertical = 12.dp),
                )
            }
        }
    }
}
