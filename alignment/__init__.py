"""Face alignment at run time: the backend imports it, nothing here imports the backend or training.

- ``align``            the FFHQ alignment recipe: landmarks -> quad -> similarity, warp and paste back.
- ``aligned_edit``     an edit in an aligned face frame (prepare the model-frame inputs, paste back).
- ``landmarks``        our MTCNN (facenet-pytorch's weights), the refinement in a model's frame and the
                       procedural faces' predictor and second stage.
- ``detector``         the procedural faces' keypoint detector: network, loading, prediction.
- ``corner_refiner``   the second landmark stage: patch network, loading, refinement in its frame.
- ``landmark_map``     the linear map from the detector's 16 keypoints to the 5 landmarks.
- ``procedural_faces`` what the run time needs to know of training/faces.py's renders (keypoint
                       names, the average face), so that it never imports training.
- ``model_files``      reading the small networks' file layout.

The shipped weights of the procedural faces' networks are in ``alignment/data``; training/ writes
them (``python -m training.train_detector``, ``training.fit_landmarks``, ``training.corner_refiner``).
"""
