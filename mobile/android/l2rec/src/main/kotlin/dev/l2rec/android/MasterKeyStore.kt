package dev.l2rec.android

import android.content.Context
import android.security.keystore.KeyGenParameterSpec
import android.security.keystore.KeyProperties
import java.io.File
import java.security.KeyStore
import java.security.SecureRandom
import javax.crypto.Cipher
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec

/**
 * The store's 32-byte master key (`RecommenderConfig.masterKey`).
 *
 * The Android Keystore does not hand out raw key bytes, so the master key is
 * 32 random bytes wrapped (AES-256-GCM) by a non-exportable Keystore key and
 * kept, wrapped, in [Context.getNoBackupFilesDir]. A copy of the app's files
 * on another device cannot unwrap it. If the Keystore key is lost (the user
 * removed the screen lock on some devices, or app data was restored elsewhere)
 * this throws, and `Recommender.open` would fail with `StoreKey`: delete the
 * store directory and this key file, then open again (the data is gone).
 */
object MasterKeyStore {
    private const val ALIAS = "l2rec-store-wrapping-key"
    private const val FILE = "l2rec-master-key.bin"
    private const val IV_BYTES = 12

    @Synchronized
    fun loadOrCreate(context: Context): ByteArray {
        val file = File(context.noBackupFilesDir, FILE)
        val wrapping = wrappingKey()
        if (file.exists()) {
            val blob = file.readBytes()
            val cipher = Cipher.getInstance("AES/GCM/NoPadding")
            cipher.init(Cipher.DECRYPT_MODE, wrapping, GCMParameterSpec(128, blob, 0, IV_BYTES))
            return cipher.doFinal(blob, IV_BYTES, blob.size - IV_BYTES)
        }
        val key = ByteArray(32).also { SecureRandom().nextBytes(it) }
        val cipher = Cipher.getInstance("AES/GCM/NoPadding")
        cipher.init(Cipher.ENCRYPT_MODE, wrapping) // the Keystore picks the IV
        val blob = cipher.iv + cipher.doFinal(key)
        val partial = File(file.path + ".partial")
        partial.writeBytes(blob)
        check(partial.renameTo(file)) { "could not write $file" }
        return key
    }

    private fun wrappingKey(): SecretKey {
        val keyStore = KeyStore.getInstance("AndroidKeyStore").apply { load(null) }
        (keyStore.getKey(ALIAS, null) as? SecretKey)?.let { return it }
        val generator = KeyGenerator.getInstance(KeyProperties.KEY_ALGORITHM_AES, "AndroidKeyStore")
        generator.init(
            KeyGenParameterSpec.Builder(ALIAS, KeyProperties.PURPOSE_ENCRYPT or KeyProperties.PURPOSE_DECRYPT)
                .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
                .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
                .setKeySize(256)
                .build(),
        )
        return generator.generateKey()
    }
}
